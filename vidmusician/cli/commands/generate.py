"""`vidmusician generate VIDEO`: music for a video, as WAV/FLAC or muxed into the video.

`vidmusician generate VIDEO VIDEO... -o FOLDER` (or a folder of videos): one output
per video, batched and resumable (:func:`vidmusician.batch.generate_many`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

from ...batch import DEFAULT_BATCH_SIZE, generate_many, music_tags, output_path, output_suffix
from ...checks import MAX_GUIDANCE, arg_number
from ...errors import ConfigError, VidMusicianError, printable, short_path
from ...generation.limits import MAX_DURATION, MIN_DURATION, SMALLEST_CARD, LimitError, known_limits
from . import one_line_warnings

HELP = "generate music for a video (WAV/FLAC, or the video with the music as its soundtrack)"


def add_arguments(parser) -> None:
    parser.add_argument("videos", nargs="+", metavar="VIDEO",
                        help="the video file; several, or folders of videos, score each into -o FOLDER")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="OUT.wav or OUT.flac for the music, OUT.mp4/.mov/.mkv for the video with the music "
                             "(video stream copied, music as AAC); default: VIDEO_NAME_music.wav here. "
                             "For several videos, or -o FOLDER/, a folder (made if missing): "
                             "FOLDER/VIDEO_NAME_music.wav each")
    parser.add_argument("--adapter", metavar="DIR|ORG/NAME[@REV]",
                        help="adapter folder or Hugging Face Hub id; without one the video only sets the length")
    parser.add_argument("--backbone", metavar="NAME|PATH|tiny",
                        help="MusicGen hub name or folder (default: the adapter's, or facebook/musicgen-small; "
                             "downloaded on first use); 'tiny' is a random offline model that makes noise, "
                             "'tiny-learned' (the practice run's) an offline one trained on synthetic music")
    parser.add_argument("--encoder", metavar="SPEC|tiny",
                        help="visual encoder (default: the adapter's); 'tiny' is a random offline one")
    parser.add_argument("--text", metavar="T", help="text prompt, e.g. 'lo-fi, piano', used together with the video")
    parser.add_argument("--duration", type=arg_number(low=MIN_DURATION, high=MAX_DURATION), metavar="S",
                        help="seconds of music (default: the video's length)")
    parser.add_argument("--seed", type=int, metavar="N", help="same seed, same music")
    coef = arg_number(low=0.0, high=MAX_GUIDANCE)
    parser.add_argument("--cfg-coef", type=coef, default=3.0, metavar="X",
                        help="classifier-free guidance of text and video together, in [0, 10] (default 3.0; "
                             "0: neither steers, 1: unamplified; negative values are refused)")
    parser.add_argument("--text-cfg", type=coef, metavar="T",
                        help="guidance of the text alone, in [0, 10] (default: --cfg-coef)")
    parser.add_argument("--video-cfg", type=coef, metavar="V",
                        help="guidance of the video on top of the text (default: --cfg-coef); different from "
                             "the text's, every step runs a third, text-only branch (up to 1.5x the time); "
                             "0: plain MusicGen with the text")
    parser.add_argument("--plausibility", type=arg_number(low=0.0, high=1.0), metavar="A",
                        help="guidance ranks only the tokens the video-conditioned model gives at least A times "
                             "its top token's probability (default: the library's, see docs/alignment.md); 0: "
                             "every token, MusicGen's guidance, which amplifies what adapters learned from lossy "
                             "soundtracks")
    parser.add_argument("--top-k", type=arg_number(integer=True, low=0), default=250, metavar="K",
                        help="sample among the K most likely tokens, at most the backbone's tokens per codebook "
                             "(2048 for MusicGen, 400 for tiny; default 250; 0: no top-k cut)")
    parser.add_argument("--temperature", type=arg_number(low=0.0, low_open=True), default=1.0, metavar="T",
                        help="sampling temperature, > 0 (default 1.0)")
    parser.add_argument("--extend-stride", type=arg_number(low=0.0, low_open=True), metavar="S",
                        help="seconds between windows past the backbone's window (30 s for MusicGen), shorter "
                             "than that window (default 18)")
    parser.add_argument("--device", metavar="DEV", help="cuda or cpu (default: cuda when available)")
    # -- decoding engine --
    parser.add_argument("--engine", choices=("fast", "reference"), default="fast",
                        help="fast: the static-cache decode engine, one CUDA graph per step on a GPU (default; "
                             "models it cannot compute fall back with a notice); reference: audiocraft's "
                             "streaming decode")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # Many videos, and the output's audio streams.
    parser.add_argument("--batch-size", type=arg_number(low=1, integer=True), default=DEFAULT_BATCH_SIZE,
                        metavar="N", help=f"videos sampled together (default {DEFAULT_BATCH_SIZE}); outputs that "
                                          f"exist are skipped, so a rerun finishes an interrupted one")
    parser.add_argument("--format", metavar="EXT",
                        help="the outputs' format when they are named for you (no -o FILE): wav (default), flac, "
                             "mp4, mov or mkv")
    parser.add_argument("--keep-soundtrack", action="store_true",
                        help="a video output keeps the video's own audio as a second audio stream (the music "
                             "stays the first, default one); without it the video's own audio is left out")


def run(args) -> int:
    check_local_adapter(args.adapter)
    if many_videos(args):
        return run_many(args)
    from ...audio_io import AUDIO_FORMATS, VIDEO_FORMATS, check_output_path
    from ...muxing import check_muxable, muxed_duration, muxed_samples, write_output
    from ...pipeline import generate
    from ...video.reader import probe

    # Every check that needs no model comes first: a bad argument costs nothing.
    video = args.videos[0]
    if args.output and args.format:
        raise ConfigError(f"--format names the outputs made for you; with -o {args.output} give one or the other")
    suffix = output_suffix(args.format or "wav")
    output = Path(args.output) if args.output else output_path(video, ".", suffix)
    check_keep_soundtrack(args, output.suffix.lower())
    try:
        kind = check_output_path(output, inputs=[video])
    except ConfigError as exc:
        if output.suffix.lower() in {**AUDIO_FORMATS, **VIDEO_FORMATS}:
            raise
        # `-o newfolder` meant as a folder: say how to name one.
        raise ConfigError(f"{exc}; for a folder, end it with / (-o {printable(args.output)}/)") from None
    # A fix names what the user typed: --format mkv, or a .mkv name for -o.
    format_option = "--format" if args.format else None
    check_muxable(video, output, keep_soundtrack=args.keep_soundtrack, format_option=format_option)
    check_backbone_limits(args)  # last: a Hub adapter's config may be fetched for it
    options = generation_options(args)
    if kind == "video" and args.duration is not None:
        # A video output holds the video's length of music: the rest would be sampled to be thrown away.
        options["duration"] = muxed_duration(video, args.duration)
        if options["duration"] < args.duration:
            print(f"vidmusician generate: note: the music is cut to the video's length ({options['duration']:.2f} s "
                  f"of {args.duration:.2f} s), so only that is generated; an audio output (.wav, .flac) keeps all "
                  f"of it", file=sys.stderr)
    with one_line_warnings("generate"), option_names():
        wav, sample_rate = generate(video, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the adapter's config again: generate showed its warnings
        tags = music_tags(args.adapter, args.encoder)
    write_output(output, wav, sample_rate, video=video, tags=tags, keep_soundtrack=args.keep_soundtrack,
                 format_option=format_option)
    samples = muxed_samples(video, wav.shape[-1], sample_rate) if kind == "video" else wav.shape[-1]
    print(f"wrote {printable(output)} ({samples / sample_rate:.2f} s, {sample_rate} Hz)", file=sys.stderr)
    if samples < wav.shape[-1]:
        print(f"vidmusician generate: note: the music was cut to the video's length ({samples / sample_rate:.2f} s "
              f"of {wav.shape[-1] / sample_rate:.2f} s); an audio output (.wav, .flac) keeps all of it",
              file=sys.stderr)
    has_audio = kind == "video" and probe(video).has_audio
    if has_audio and not args.keep_soundtrack:
        print(f"vidmusician generate: note: the video's own soundtrack is replaced by the music "
              f"(--keep-soundtrack keeps it as a second audio stream)", file=sys.stderr)
    if kind == "video" and args.keep_soundtrack and not has_audio:
        print(f"vidmusician generate: note: the video has no soundtrack of its own to keep (--keep-soundtrack); "
              f"the output holds the music alone", file=sys.stderr)
    return 0


def check_local_adapter(adapter: str | None) -> None:
    """Refuses an --adapter folder that is not there (a name that is no Hub id) before the model stack
    imports (seconds): the line loading would give. A Hub id is the Hub's to answer."""
    from ...adapter_files import check_folder
    from ...hub import is_hub_id

    if adapter and not is_hub_id(adapter):
        check_folder(adapter)


def check_keep_soundtrack(args, suffix: str) -> None:
    """Refuses --keep-soundtrack with an audio output (``suffix``), naming the option that makes a video one."""
    from ...audio_io import VIDEO_FORMATS

    if not args.keep_soundtrack or suffix in VIDEO_FORMATS:
        return
    if args.output and not many_videos(args):  # -o names the output
        raise ConfigError(f"{printable(args.output)}: --keep-soundtrack needs a video output "
                          f"({', '.join(VIDEO_FORMATS)}), e.g. -o {printable(Path(args.output).with_suffix('.mp4'))}")
    formats = [s[1:] for s in VIDEO_FORMATS]
    raise ConfigError(f"--keep-soundtrack needs a video output, not {suffix[1:]}: use --format "
                      f"{', '.join(formats[:-1])} or {formats[-1]}")


def generation_options(args) -> dict:
    """The keyword arguments of :func:`~vidmusician.generate` (and ``generate_many``) the command sets."""
    options = dict(adapter=args.adapter, backbone=args.backbone, encoder=args.encoder, text=args.text,
                   duration=args.duration, cfg_coef=args.cfg_coef, text_cfg_coef=args.text_cfg,
                   video_cfg_coef=args.video_cfg, top_k=args.top_k, temperature=args.temperature, seed=args.seed,
                   device=args.device, progress=not args.quiet, extend_stride=args.extend_stride,
                   engine=args.engine)
    if args.plausibility is not None:  # unset: the library's default (importing it here would load torch)
        options["plausibility"] = args.plausibility
    return options


# The options of the library's parameters whose bounds depend on the backbone.
OPTIONS = {"top_k": "--top-k", "extend_stride": "--extend-stride"}


def check_backbone_limits(args) -> None:
    """Refuses --top-k and --extend-stride beyond the backbone's bounds, when its name tells them.

    A backbone known by name (a released MusicGen, tiny, random-*: see
    :func:`~vidmusician.generation.limits.known_limits`), given with --backbone or named in the
    adapter's config, is checked here, before it loads; any other is checked once loaded
    (:func:`option_names` words that error the same way).
    """
    limits = known_limits(backbone_name(args))
    if limits is not None:
        with option_names():
            limits.check(args.top_k, args.extend_stride)


def backbone_name(args) -> str:
    """The backbone generate loads, as far as it is known without loading: --backbone, else the
    adapter's (read from its config: a local folder's, or a Hub adapter's, fetched alone into the
    cache where the adapter's load finds it), else the default."""
    from ...pipeline import DEFAULT_BACKBONE

    if args.backbone:
        return args.backbone
    if not args.adapter:
        return DEFAULT_BACKBONE
    from ...config import CONFIG_NAME, AdapterConfig
    from ...hub import is_hub_id, resolve_adapter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the adapter's load shows them, once
            if is_hub_id(args.adapter):
                if not could_pass_a_bound(args):
                    return ""  # nothing to refuse: no request to the Hub before the adapter's load
                return AdapterConfig.load(resolve_adapter(args.adapter, files=(CONFIG_NAME,))).backbone
            return AdapterConfig.load(args.adapter).backbone
    except (VidMusicianError, OSError):
        return ""  # the adapter's load says what is wrong with it, before any model loads


def could_pass_a_bound(args) -> bool:
    """Whether --top-k or --extend-stride could pass some backbone's bound: a top-k above the smallest
    known tokens per codebook, or a stride given (the default stride always fits)."""
    return args.top_k > SMALLEST_CARD or args.extend_stride is not None


@contextlib.contextmanager
def option_names():
    """A backbone's bound on --top-k or --extend-stride found once it loaded, in these options' names."""
    try:
        yield
    except LimitError as exc:
        raise exc.named(OPTIONS) from None


def many_videos(args) -> bool:
    """Several videos, a folder of them, or -o naming a folder (not OUT.wav): one output each, in a folder."""
    from ...audio_io import AUDIO_FORMATS, VIDEO_FORMATS

    out = Path(args.output) if args.output else None
    into_folder = out is not None and out.is_dir() and out.suffix.lower() not in {**AUDIO_FORMATS, **VIDEO_FORMATS}
    return len(args.videos) > 1 or Path(args.videos[0]).is_dir() or into_folder or names_folder(args.output)


def names_folder(output: str | None) -> bool:
    """-o ends with a slash (``scored/``): a folder, made if missing, whatever its name or the count of videos."""
    return bool(output) and output.endswith(("/", os.sep))


def run_many(args) -> int:
    """Scores every video into the -o folder; exit status 1 when a video failed."""
    from tqdm.auto import tqdm

    from ...audio_io import AUDIO_FORMATS, VIDEO_FORMATS

    folder = Path(args.output or ".")
    suffix = folder.suffix.lower()
    if args.output and suffix and not folder.is_dir() and not names_folder(args.output):
        if suffix in {**AUDIO_FORMATS, **VIDEO_FORMATS}:  # meant as one file
            fix = f"-o takes a folder (and --format their format): -o {printable(folder.with_suffix(''))}/ " \
                  f"--format {suffix[1:]}"
        else:
            fix = f"end -o with / to name a folder: -o {printable(args.output)}/"
        raise ConfigError(f"{args.output}: several videos write one file each, into a folder; {fix}")
    check_keep_soundtrack(args, output_suffix(args.format or "wav"))
    check_backbone_limits(args)

    def log(line):
        tqdm.write(f"vidmusician generate: {printable(line)}", file=sys.stderr)

    with one_line_warnings("generate"), option_names():
        report = generate_many(args.videos, folder, batch_size=args.batch_size, output_format=args.format or "wav",
                               keep_soundtrack=args.keep_soundtrack, log=log, format_option="--format",
                               **generation_options(args))
    if report.replaced_soundtracks:
        print(f"vidmusician generate: note: the video's own soundtrack is replaced by the music in "
              f"{len(report.replaced_soundtracks)} of {len(report.scored)} outputs (--keep-soundtrack keeps it as a "
              f"second audio stream)", file=sys.stderr)
    if report.no_soundtrack:
        print(f"vidmusician generate: note: {len(report.no_soundtrack)} of {len(report.scored)} videos have no "
              f"soundtrack of their own to keep (--keep-soundtrack); their outputs hold the music alone",
              file=sys.stderr)
    failed = "".join(f"\n  {line}" for line in report.failures())
    print(f"vidmusician generate: {report.summary()} into {short_path(folder)}{failed}", file=sys.stderr)
    return 1 if report.failed else 0
