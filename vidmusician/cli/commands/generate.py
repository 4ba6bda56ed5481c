"""`vidmusician generate VIDEO`: music for a video, as WAV/FLAC or muxed into the video."""

from __future__ import annotations

import sys
from pathlib import Path

from ...checks import MAX_GUIDANCE, arg_number
from ...errors import printable
from . import one_line_warnings

HELP = "generate music for a video (WAV/FLAC, or the video with the music as its soundtrack)"


def add_arguments(parser) -> None:
    parser.add_argument("video", help="the video file")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="OUT.wav or OUT.flac for the music, OUT.mp4/.mov/.mkv for the video with the music "
                             "(video stream copied, music as AAC); default: VIDEO_NAME_music.wav here")
    parser.add_argument("--adapter", metavar="DIR|ORG/NAME[@REV]",
                        help="adapter folder or Hugging Face Hub id; without one the video only sets the length")
    parser.add_argument("--backbone", metavar="NAME|PATH|tiny",
                        help="MusicGen hub name or folder (default: the adapter's, or facebook/musicgen-small; "
                             "downloaded on first use); 'tiny' is a random offline model that makes noise")
    parser.add_argument("--encoder", metavar="SPEC|tiny",
                        help="visual encoder (default: the adapter's); 'tiny' is a random offline one")
    parser.add_argument("--text", metavar="T", help="text prompt, e.g. 'lo-fi, piano', used together with the video")
    parser.add_argument("--duration", type=float, metavar="S", help="seconds of music (default: the video's length)")
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
    parser.add_argument("--plausibility", type=float, metavar="A",
                        help="guidance ranks only the tokens the video-conditioned model gives at least A times "
                             "its top token's probability (default: the library's, see docs/alignment.md); 0: "
                             "every token, MusicGen's guidance, which amplifies what adapters learned from lossy "
                             "soundtracks")
    parser.add_argument("--top-k", type=int, default=250, metavar="K", help="top-k sampling (default 250)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (default 1.0)")
    parser.add_argument("--extend-stride", type=float, metavar="S",
                        help="seconds between windows past the backbone's 30 s window (default 18)")
    parser.add_argument("--device", metavar="DEV", help="cuda or cpu (default: cuda when available)")
    # -- decoding engine --
    parser.add_argument("--engine", choices=("fast", "reference"), default="fast",
                        help="fast: the static-cache decode engine, one CUDA graph per step on a GPU (default; "
                             "models it cannot compute fall back with a notice); reference: audiocraft's "
                             "streaming decode")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ...audio_io import check_output_path, write_output
    from ...pipeline import check_duration, generate

    # Every check that needs no model comes first: a bad argument costs nothing.
    check_duration(args.duration)
    output = Path(args.output) if args.output else Path(f"{Path(args.video).stem}_music.wav")
    check_output_path(output, inputs=[args.video])
    # Unset: generate()'s default (importing it here would load torch before the cheap checks).
    kwargs = {} if args.plausibility is None else {"plausibility": args.plausibility}
    kwargs["engine"] = args.engine
    with one_line_warnings("generate"):
        wav, sample_rate = generate(
            args.video, adapter=args.adapter, backbone=args.backbone, encoder=args.encoder, text=args.text,
            duration=args.duration, cfg_coef=args.cfg_coef, text_cfg_coef=args.text_cfg,
            video_cfg_coef=args.video_cfg, top_k=args.top_k, temperature=args.temperature,
            seed=args.seed, device=args.device, progress=not args.quiet, extend_stride=args.extend_stride, **kwargs)
    write_output(output, wav, sample_rate, video=args.video, tags=music_tags(args))
    seconds = wav.shape[-1] / sample_rate
    print(f"wrote {printable(output)} ({seconds:.2f} s, {sample_rate} Hz)", file=sys.stderr)
    return 0


def music_tags(args) -> dict | None:
    """What made the music, for `vidmusician eval` to find the same visual encoder (None: no adapter)."""
    if not args.adapter:
        return None  # plain MusicGen: no visual encoder shaped the music
    from ...config import CONFIG_NAME, AdapterConfig
    from ...hub import resolve_adapter
    from ...video.encoder_specs import natural_activation

    config = AdapterConfig.load(resolve_adapter(args.adapter, files=(CONFIG_NAME,)))  # a Hub id: the cached copy
    encoder = args.encoder or config.encoder
    activation = config.encoder_activation or natural_activation(encoder)
    return {"encoder": encoder, "encoder_activation": activation, "adapter": printable(args.adapter)}

