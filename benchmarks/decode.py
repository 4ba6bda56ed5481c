"""Decode speed: audiocraft's streaming path against the static-cache engine, base and adapted, side by side.

For each LM architecture (MusicGen-small, -medium with random weights; 'tiny' for a
quick check), batch size and guidance (2 branches: text and video together; 3: text
and video apart), one model generates ``--seconds`` of music four ways, interleaved
round by round (each round starting with the next one): the reference path (``engine='reference'``: audiocraft's streaming
forward) and the engine, each with the adapters (the shipped preset for the
architecture, weights moved off their init so the video acts) and without them
(``disable_adapters()``: the base MusicGen, same batch). The engine's cache is sized for
a full 30 s window whatever ``--seconds`` measures, so a captured step attends over
what a real window's does; steps are timed from the start of a window (where the
reference's growing cache is shortest: its later steps cost more, the engine's do not).

ms/step is the median round's generation time over its steps (text encoding and each
window's setup included). x real time is seconds of music per wall second for the
batch (each video gets that much music): ``1 / (frame_rate x step + decoding)``, with
decoding measured on the generated codes by a codec with the real 32 kHz EnCodec's
filters (random weights). On CUDA the LM runs in float16 under autocast, as
audiocraft loads it; the engine's one-off warm-up and CUDA graph capture are printed
apart.

    .venv/bin/python benchmarks/decode.py [--sizes small medium] [--batches 1 8] [--branches 2 3]
                                          [--seconds 1] [--rounds 3] [--device cuda] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vidmusician import attach_adapters  # noqa: E402
from vidmusician.adapter.audiocraft_internals import text_conditions  # noqa: E402
from vidmusician.adapter.context import VideoBatch  # noqa: E402
from vidmusician.config import AdapterConfig  # noqa: E402
from vidmusician.sizing import load_preset  # noqa: E402
from vidmusician.generation.engine_select import engine_for  # noqa: E402
from vidmusician.generation.guidance import GenerationParams  # noqa: E402
from vidmusician.generation.windows import generate_tokens  # noqa: E402

VARIANTS = [("reference", False), ("reference", True), ("fast", False), ("fast", True)]
WINDOW_SECONDS = 30


def random_lm(size: str, device="cpu"):
    """An LM of a real MusicGen architecture (or 'tiny'), random weights, built in seconds.

    Built on the meta device and filled with scaled normal weights tiled from a pool of a
    prime length (so rows do not repeat in step): audiocraft's own initialization of
    300M to 1.5B parameters takes minutes, and speed and exactness need none of it.
    """
    from audiocraft.models import builders

    from vidmusician.testing.random_backbones import architecture, lm_config

    arch = dict(dim=32, num_heads=4, num_layers=4) if size == "tiny" else architecture(size)
    cfg = lm_config(**arch, card=2048)
    cfg.device = "meta"
    with torch.device("meta"):
        lm = builders.get_lm_model(cfg)
    lm = lm.to_empty(device=device).eval()
    pool = torch.randn(1_000_003, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.dim() > 1:
                tiles = pool.repeat(-(-p.numel() // len(pool)))[:p.numel()]
                p.copy_(tiles.view(p.shape) * p.shape[-1] ** -0.5)
            else:  # norms start at the identity, biases at zero
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    return lm


def build(size: str, device: str):
    """A VidMusician on a random LM of ``size`` (text through a random T5 of t5-base's shape, which the
    presets' 't5-lora' semantic encoder runs the video through) with the random real-size codec."""
    from audiocraft.models.musicgen import MusicGen

    from vidmusician.adapter.t5 import T5_BASE, TINY_T5, attach_random_t5
    from vidmusician.backbones import load_codec

    lm = random_lm(size, device)
    attach_random_t5(lm, *(("t5-small", TINY_T5) if size == "tiny" else ("t5-base", T5_BASE)), seed=0, device=device)
    if device != "cpu":
        lm = lm.half()  # as audiocraft's loader puts the LM on a GPU
    musicgen = MusicGen(f"random-{size}", load_codec("random-encodec", device=device), lm,
                        max_duration=WINDOW_SECONDS)
    if size == "tiny":
        config = AdapterConfig.for_backbone(musicgen, global_dim=32, local_dim=16, memory_dim=32, attn_dim=16,
                                            attn_heads=2, encoder="tiny")
    else:
        config = load_preset(f"musicgen-{size}")  # the shipped adapter layout for this architecture
    vm = attach_adapters(musicgen, config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in vm.adapter_state_dict().values():  # off the identity init: the adapters act
            tensor.add_((torch.randn(tensor.shape, generator=g) * 0.02).to(tensor.device, tensor.dtype))
    return vm


def videos(vm, batch: int, seconds: float) -> VideoBatch:
    c = vm.config
    g = torch.Generator().manual_seed(0)
    frames = int(seconds * vm.musicgen.frame_rate)
    n_global = max(1, int(seconds * c.global_fps))
    return VideoBatch(torch.randn(batch, n_global, c.global_dim, generator=g),
                      torch.ones(batch, n_global, dtype=torch.bool), torch.rand(batch, frames, c.local_dim, generator=g),
                      torch.ones(batch, dtype=torch.bool), c.global_fps, vm.musicgen.frame_rate).to(vm.device)


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(vm, batch: int, branches: int, args, device) -> dict:
    """{variant: (ms per step, x real time)} and the engine's warm-up/capture seconds, for one configuration."""
    musicgen = vm.musicgen
    frame_rate = musicgen.frame_rate
    frames = int(args.seconds * frame_rate)
    coefs = dict(cfg_coef=3.0) if branches == 2 else dict(text_cfg_coef=3.0, video_cfg_coef=5.0)
    attributes = text_conditions(musicgen, ["lo-fi, piano"] * batch)
    batch_videos = videos(vm, batch, args.seconds)
    pattern = vm.lm.pattern_provider.get_pattern(frames)
    steps = len(pattern.layout) - pattern.get_first_step_with_timesteps(0)
    # One engine per shape, its cache sized for a full window: generate_tokens reuses it.
    window = len(vm.lm.pattern_provider.get_pattern(WINDOW_SECONDS * frame_rate).layout)
    engine = engine_for(vm.lm, batch, branches, window)

    def generate(name, adapted):
        params = GenerationParams(engine=name, **coefs)
        assert params.guidance(True, True).branches == branches
        if adapted:
            return generate_tokens(musicgen, attributes, frames, params, vm=vm, videos=batch_videos)
        with vm.disable_adapters():
            return generate_tokens(musicgen, attributes, frames, params, vm=vm, videos=batch_videos)

    times = {v: [] for v in VARIANTS}
    codes = None
    with torch.no_grad():
        for round_ in range(args.warmup + args.rounds):
            # Each round starts with another variant: what a round's position costs hits them all alike.
            for variant in VARIANTS[round_ % 4:] + VARIANTS[:round_ % 4]:
                sync(device)
                start = time.perf_counter()
                codes = generate(*variant)
                sync(device)
                if round_ >= args.warmup:
                    times[variant].append(time.perf_counter() - start)
        warm = dict(engine.graph.timings) if engine.graph is not None else {}
        sync(device)
        start = time.perf_counter()
        musicgen.generate_audio(codes)
        sync(device)
        decode = (time.perf_counter() - start) / args.seconds  # seconds of decoding per second of music
    out = {}
    for variant, ts in times.items():
        step = statistics.median(ts) / steps
        out[variant] = (step * 1e3, 1.0 / (frame_rate * step + decode))
    return {"rows": out, "warm": warm, "steps": steps}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "medium"], choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--branches", nargs="+", type=int, default=[2, 3], choices=[2, 3])
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds of music per generation (one window)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (the engine captures here)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    lines = [f"device: {where}; torch {torch.__version__}; {args.seconds:g} s of music per run, {args.warmup} "
             f"warm-up + {args.rounds} timed rounds, interleaved; ms per step (x real time with decoding)", "",
             "| LM | batch | branches | reference base | reference adapted | engine base | engine adapted "
             "| engine / reference speed (base, adapted) | engine warm-up + capture s |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for size in args.sizes:
        vm = build(size, args.device)
        for batch in args.batches:
            for branches in args.branches:
                result = run_config(vm, batch, branches, args, device)
                rows = result["rows"]
                cells = [f"{ms:.2f} ms ({rtf:.2f}x)" for ms, rtf in (rows[v] for v in VARIANTS)]
                speed = (f"{rows[('reference', False)][0] / rows[('fast', False)][0]:.2f}x, "
                         f"{rows[('reference', True)][0] / rows[('fast', True)][0]:.2f}x")
                warm = result["warm"]
                warm_cell = f"{warm['warmup_s']:.2f} + {warm['capture_s']:.2f}" if warm else "eager (no graph)"
                line = f"| {size} | {batch} | {branches} | {' | '.join(cells)} | {speed} | {warm_cell} |"
                lines.append(line)
                print(line, flush=True)
        del vm
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
