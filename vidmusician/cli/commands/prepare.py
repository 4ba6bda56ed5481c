"""`vidmusician prepare SRC OUT`: cache codec codes and visual features of (video, music) pairs.

Several processes or machines: ``accelerate launch -m vidmusician.training.prepare SRC OUT ...``
(same arguments); see :mod:`vidmusician.training.prepare`.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import printable
from . import one_line_warnings

HELP = "prepare a training dataset: codec codes and visual features of (video, music) windows"


def add_arguments(parser):
    from ...video.frame_batches import CPU_ENCODER_BATCH, GPU_ENCODER_BATCH  # torch: loaded when the parser is built

    parser.add_argument("src", metavar="SRC",
                        help="a folder of music videos (their audio track is the music), or a CSV/JSONL "
                             "with columns video, audio (optional), text (optional)")
    parser.add_argument("out", metavar="OUT", help="dataset folder to write (a rerun continues, with the "
                                                    "dataset's own settings for the options below left out)")
    parser.add_argument("--backbone", default=None, metavar="NAME|PATH|tiny",
                        help="MusicGen whose codec encodes the music: hub name, local folder, 'tiny' or "
                             "'tiny-learned' (the practice run's); only the codec is loaded (default "
                             "facebook/musicgen-small)")
    parser.add_argument("--encoder", default=None, metavar="SPEC|tiny",
                        help="visual encoder spec (default ViT-B-32:openai; 'tiny' for tests)")
    parser.add_argument("--window", type=float, default=None, metavar="S",
                        help="window length in seconds (default 30)")
    parser.add_argument("--hop", type=float, default=None, metavar="S",
                        help="step between windows in seconds (default 30)")
    parser.add_argument("--holdout", type=float, default=None, metavar="F",
                        help="fraction of videos held out (default 0.05); training always keeps at least one")
    parser.add_argument("--global-fps", type=float, default=None, metavar="FPS",
                        help="rate of the global features (default 1)")
    parser.add_argument("--local-fps", type=float, default=None, metavar="FPS",
                        help="rate of the local features (default 25)")
    parser.add_argument("--retry-errors", action="store_true", help="try again the files listed in OUT/errors.jsonl")
    parser.add_argument("--device", default=None, metavar="DEV", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--encoder-batch", type=int, default=None, metavar="N",
                        help=f"frames per visual encoder batch, filled across videos (default {GPU_ENCODER_BATCH} "
                             f"on a GPU, {CPU_ENCODER_BATCH} on a CPU)")
    parser.add_argument("--verify", action="store_true",
                        help="then read every shard and window of OUT as training reads them (sizes, checksums, "
                             "shapes, codes, finite features; about 0.6 ms a window): damage is found now, not "
                             "mid-training. On a finished dataset: the check alone")
    parser.add_argument("--practice", type=int, default=None, metavar="N",
                        help="first write N practice music videos into SRC (a new or empty folder, or one of "
                             "fewer practice videos: the missing ones are written): synthetic "
                             "music of the 'tiny-learned' backbone, timed to the picture; prepare them with "
                             "--backbone tiny-learned --encoder tiny to try training on a CPU in minutes")
    parser.add_argument("--per-video-batches", action="store_true",
                        help="encode each video's frames in batches of their own (slower on short videos; "
                             "to compare, the dataset is the same)")


def run(args) -> int:
    import sys

    from ...training.launch import stopped_by_sigterm
    from ...training.prepare import prepare

    if args.practice is not None:
        from ...training.practice import write_practice_videos

        videos = write_practice_videos(args.src, args.practice)
        print(f"{len(videos)} practice videos in {printable(args.src)}")
    try:
        with one_line_warnings("prepare"):
            report = prepare(args.src, args.out, backbone=args.backbone, encoder=args.encoder, window=args.window,
                             hop=args.hop, holdout=args.holdout, global_fps=args.global_fps,
                             local_fps=args.local_fps, retry_errors=args.retry_errors, device=args.device,
                             encoder_batch=args.encoder_batch, per_video_batches=args.per_video_batches,
                             verify=args.verify)
    except BaseException as exc:
        if not stopped_by_sigterm(exc):  # (also an error a library made of it)
            raise
        print(f"vidmusician prepare: stopped by SIGTERM; every finished video is kept in {printable(args.out)}: "
              f"run the same command again to continue", file=sys.stderr)
        return 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended
    print(f"{report.sources} sources: {report.already_done} already done, {report.prepared} prepared "
          f"({report.windows} windows), {len(report.failed)} failed")
    if report.seconds:  # where the time went: what to speed up (or to spread over more processes)
        print("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in report.seconds.items())
              + f" ({report.elapsed:.2f} from the first video to the last)")
    for failure in report.failed:
        print(f"  skipped {failure['error']}")
    if report.splits:  # the whole dataset, also what earlier runs prepared
        (videos, windows), (held, held_windows) = report.splits["train"], report.splits["holdout"]
        print(f"  dataset: {windows} training window{'s' * (windows != 1)} from {videos} video{'s' * (videos != 1)}, "
              f"{held_windows} holdout window{'s' * (held_windows != 1)} from {held} video{'s' * (held != 1)}")
    if report.holdout_note:
        print(f"  {report.holdout_note}")
    if report.verified:
        print(f"  verified {report.verified[0]} shards, {report.verified[1]} windows: intact")
    if report.failed:
        print(f"  (listed in {printable(Path(args.out) / 'errors.jsonl')}; --retry-errors tries them again)")
    return 0
