"""Real-time factor of generation: seconds of music per wall-clock second.

For each architecture (the tiny test backbone, and MusicGen-small's LM with random
weights and a small random 50 Hz codec), times two models built from the same
seed: plain MusicGen (audiocraft's own ``MusicGen.generate``) and the same
backbone with adapters through ``VidMusician.generate``. Runs are interleaved
(round by round, model by model) so that every pair sees the same machine state.
Both include CFG (batch 2) and decoding; video features are given precomputed
(random), so the visual encoder is not in the numbers. The table gives the best
and the median of the timed rounds: on a shared machine the best is the stable one.

    .venv/bin/python benchmarks/generate.py [--sizes tiny small] [--seconds 2] [--rounds 4] [--warmup 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

from vidmusician import attach_adapters
from vidmusician.random_backbones import random_musicgen, tiny_musicgen
from vidmusician.config import AdapterConfig, load_preset
from vidmusician.video.features import VideoFeatures


def build(size: str, device: str):
    """(plain MusicGen, VidMusician) on identical backbones, and the adapter config."""
    if size == "tiny":
        base = tiny_musicgen(device=device)
        # The tiny encoder's widths (32-d embeddings, 16 patches), as in the tests.
        config = AdapterConfig.for_backbone(base, global_dim=32, local_dim=16, memory_dim=32, attn_dim=16,
                                            attn_heads=2, encoder="tiny")
    else:
        base = random_musicgen(size, device=device)
        config = load_preset(f"musicgen-{size}")  # the shipped adapter layout for this architecture
    vm = attach_adapters(copy.deepcopy(base), config)
    return base, vm


def features(config: AdapterConfig, seconds: float) -> VideoFeatures:
    g = torch.Generator().manual_seed(0)
    n_global = max(1, int(seconds * config.global_fps))
    n_local = max(1, int(seconds * config.local_fps))
    return VideoFeatures(torch.randn(n_global, config.global_dim, generator=g),
                         torch.rand(n_local, config.local_dim, generator=g),
                         config.global_fps, config.local_fps, seconds, config.encoder)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of music per generation")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (page-ins, allocator, caches)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {where}; torch {torch.__version__}; {args.seconds:g} s of music per run, "
          f"{args.warmup} warm-up + {args.rounds} timed rounds, interleaved; CFG on (batch 2), decoding "
          f"included, visual encoder excluded")

    runs = {}
    for size in args.sizes:
        base, vm = build(size, args.device)
        base.set_generation_params(duration=args.seconds)
        feats = features(vm.config, args.seconds)
        runs[(size, "MusicGen")] = lambda base=base: base.generate([None])
        runs[(size, "+ adapters")] = lambda vm=vm, feats=feats: vm.generate([feats], duration=args.seconds)

    times = {key: [] for key in runs}
    with torch.no_grad():
        for _ in range(args.warmup):
            for fn in runs.values():
                fn()
        for _ in range(args.rounds):
            for key, fn in runs.items():
                times[key].append(timed(fn, device))

    print("\n| backbone | model | best wall s | real-time factor (best) | real-time factor (median) "
          "| adapted / plain time (best) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        plain = min(times[(size, "MusicGen")])
        for variant in ("MusicGen", "+ adapters"):
            best, median = min(times[(size, variant)]), statistics.median(times[(size, variant)])
            ratio = f"{best / plain:.2f}x" if variant != "MusicGen" else ""
            print(f"| {size} | {variant} | {best:.2f} | {args.seconds / best:.2f} | {args.seconds / median:.2f} "
                  f"| {ratio} |")


if __name__ == "__main__":
    main()
