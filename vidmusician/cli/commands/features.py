"""`vidmusician features`: extract a video's visual features to a safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...audio_io import check_writable, same_file
from ...checks import arg_number
from ...errors import ConfigError, printable
from . import one_line_warnings

HELP = "extract a video's visual features: global CLIP embeddings and the local change signal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="video file")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, metavar="FILE",
        help="output .safetensors file (default: VIDEO's name with .features.safetensors, next to it)",
    )
    parser.add_argument(
        "--encoder", default=None, metavar="NAME[:TAG]|PATH|tiny",
        help="open_clip visual encoder: NAME:TAG (e.g. ViT-B-32:openai, the default), NAME:/path/to/checkpoint "
        "(a state dict, or OpenAI's TorchScript .pt; NAME-quickgelu for QuickGELU weights), an open_clip model "
        "folder, hf-hub:ORG/REPO, or 'tiny' (random, offline, for tests)",
    )
    parser.add_argument("--global-fps", type=arg_number(low=0, high=1000, low_open=True), default=1.0, metavar="FPS",
                        help="rate of the global embeddings, in (0, 1000] (default 1)")
    parser.add_argument("--local-fps", type=arg_number(low=0, high=1000, low_open=True), default=25.0, metavar="FPS",
                        help="rate of the local change signal, in (0, 1000] (default 25)")
    parser.add_argument("--batch-size", type=arg_number(integer=True, low=1, high=65536), default=64, metavar="N",
                        help="frames per encoder batch, in [1, 65536] (default 64)")
    # Two flags rather than one with an optional value: `--cache VIDEO` would read VIDEO as the folder.
    parser.add_argument(
        "--cache", action="store_true",
        help="reuse features cached by content hash, encoder and rates, in ~/.cache/vidmusician/features",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="cache in DIR (implies --cache)")
    parser.add_argument("--device", default=None, metavar="DEV",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ...video.encoder_specs import ACTIVATION_NAMES
    from ...video.features import extract_features

    output = args.output or args.video.with_name(f"{args.video.stem}.features.safetensors")
    if output.suffix.lower() != ".safetensors":
        raise ConfigError(f"{output}: features are written as safetensors; name the output OUT.safetensors")
    if output.is_dir():
        raise ConfigError(f"{output}: is a directory; give a file name for the features (-o OUT.safetensors)")
    if not output.parent.is_dir():
        raise ConfigError(f"{output}: folder {output.parent} does not exist")
    check_writable(output)
    if same_file(output, args.video):
        raise ConfigError(f"{output}: is the input video; give another output name (-o OUT.safetensors)")
    with one_line_warnings("features"):
        feats = extract_features(
            args.video, encoder=args.encoder, global_fps=args.global_fps, local_fps=args.local_fps,
            batch_size=args.batch_size, cache_dir=args.cache_dir or args.cache or None, progress=not args.quiet,
            device=args.device,
        )
    feats.save(output)
    g, loc = feats.global_feats, feats.local_feats
    print(
        f"{printable(output)}: global {list(g.shape)} at {feats.global_fps:g} fps, local {list(loc.shape)} at "
        f"{feats.local_fps:g} fps, {feats.duration:.2f} s, encoder {feats.encoder} "
        f"({ACTIVATION_NAMES.get(feats.encoder_activation, feats.encoder_activation)})"
    )
    return 0
