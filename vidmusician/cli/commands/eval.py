"""`vidmusician eval`: rhythm-alignment, audio-quality and text-adherence metrics of generated music."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ...errors import ConfigError, printable
from ...evaluation.embedders import DEFAULT_CLAP
from ...evaluation.metrics import BAILANDO_FPS, DEFAULT_BA_SIGMA, bailando_sigma

HELP = ("score generated music against its videos (beat alignment, BCS/BHS, LORIS F1), its reference (FAD, KL) "
        "and its prompts (CLAP score); plot visual beats vs onsets")


def add_arguments(parser):
    parser.add_argument("--videos", required=True, metavar="DIR", help="folder of input videos")
    parser.add_argument("--generated", required=True, metavar="DIR",
                        help="folder of generated music, one file per video named after it "
                             "(clip.mp4 -> clip.wav/.flac/.mp3 or generate's clip_music.*, or a video "
                             "with an audio track)")
    parser.add_argument("--reference", metavar="DIR",
                        help="folder of reference music matched by stem, for BCS/BHS and LORIS scores; "
                             "pass the --videos folder to use the videos' own soundtracks (a video without one is "
                             "scored without a reference)")
    parser.add_argument("-o", "--output", "--out", dest="out", metavar="FILE",
                        help="write per-file and mean metrics to this JSON file")
    parser.add_argument("--plot", metavar="DIR", help="write one PNG per file: visual beats above music onsets")
    parser.add_argument("--encoder", metavar="NAME[:TAG]|PATH|tiny",
                        help="visual encoder for the change signal, as for `vidmusician features` (default: "
                             "the one `vidmusician generate` recorded in the generated files, else "
                             "ViT-B-32:openai); the report says which was used")
    parser.add_argument("--cache", nargs="?", const=True, default=None, metavar="DIR",
                        help="reuse visual features cached by content hash, as for `vidmusician features`")
    parser.add_argument("--visual-source", choices=("change", "flow"), default="change",
                        help="visual beats from the CLIP patch change signal (default) or optical-flow magnitude")
    parser.add_argument("--beat-floor", type=float, metavar="VALUE",
                        help="smallest change a visual beat needs, in the signal's units (default 0.02 for "
                             "change, 0.25 px for flow); beats must also stand 5 robust deviations above the "
                             "clip's own change")
    parser.add_argument("--local-fps", type=float, default=25.0, metavar="FPS",
                        help="rate of the visual signal (default 25)")
    parser.add_argument("--ba-sigma", type=float, default=DEFAULT_BA_SIGMA, metavar="SECONDS",
                        help=f"tolerance of the beat-alignment score (default {DEFAULT_BA_SIGMA:g}: 3 frames at "
                             f"25 fps; Bailando's is {bailando_sigma():g}, 3 frames at {BAILANDO_FPS:g} fps)")
    parser.add_argument("--embedder", action="append", default=[], metavar="clap|vggish|MODULE:NAME",
                        help="adds the Fréchet audio distance of generated vs reference music (needs --reference) "
                             "under CLAP, VGGish or your callable (audio, sample_rate) -> [n, D]; repeat for several")
    parser.add_argument("--clap-model", default=DEFAULT_CLAP, metavar="ID|DIR",
                        help=f"CLAP checkpoint for --embedder clap and the text score (default {DEFAULT_CLAP}, "
                             "downloaded on first use)")
    parser.add_argument("--vggish-weights", metavar="FILE",
                        help="VGGish weights for --embedder vggish (default torchvggish's release, downloaded on "
                             "first use)")
    parser.add_argument("--kl", action="store_true",
                        help="adds the KL divergence of PaSST's AudioSet label distributions, generated vs reference "
                             "(audiocraft's metric, as MusicGen reports it; needs --reference and hear21passt; "
                             "weights download on first use)")
    parser.add_argument("--prompts", metavar="FILE",
                        help='JSON {"clip": "text prompt", ...} keyed by the video\'s name (clip or clip.mp4): '
                             "adds clap_text, the CLAP text-music score of each clip against the prompt it was "
                             "generated from")
    parser.add_argument("--text", metavar="PROMPT", help="one prompt for every clip, as --prompts")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr (warnings still)")


def run(args) -> int:
    from ...evaluation.embedders import load_embedder, read_prompts
    from ...evaluation.evaluate import EvalSettings, evaluate
    from ...evaluation.visual_beats import VISUAL_BEAT_PRESETS

    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--output {args.out}: is a folder; give a file name such as report.json")
    visual = None
    if args.beat_floor is not None:
        visual = dataclasses.replace(VISUAL_BEAT_PRESETS[args.visual_source], floor=args.beat_floor)
    settings = EvalSettings(visual=visual, local_fps=args.local_fps, source=args.visual_source, ba_sigma=args.ba_sigma)
    if args.prompts and args.text:
        raise ConfigError("--prompts and --text both give prompts; pass one of them")
    if (args.embedder or args.kl) and args.reference is None:
        raise ConfigError("--embedder and --kl compare with reference music; pass --reference")
    prompts = read_prompts(args.prompts) if args.prompts else args.text
    embedders = dict(load_embedder(spec, args.clap_model, args.vggish_weights) for spec in args.embedder)
    clap = None
    if prompts:
        clap = embedders.get("clap") or load_embedder("clap", args.clap_model)[1]
    kl_metric = None
    if args.kl:
        from ...evaluation.audio_kl import PasstKL

        kl_metric = PasstKL()
    def log(line: str) -> None:
        # --quiet leaves out the progress lines, never a warning or a note: a video skipped or
        # a prompt left out would otherwise go unsaid.
        if line.startswith(("warning: ", "note: ")):
            print(f"vidmusician eval: {line}", file=sys.stderr, flush=True)
        elif not args.quiet:
            print(line, file=sys.stderr, flush=True)

    report = evaluate(
        args.videos, args.generated, args.reference,
        encoder=args.encoder, settings=settings, embedders=embedders, prompts=prompts, text_embedder=clap,
        kl_metric=kl_metric,
        plot_dir=args.plot, log=log, feature_cache=args.cache,
    )
    print(report.table())
    if args.out:
        report.write_json(args.out)
        log(f"wrote {printable(args.out)}")
    return 0
