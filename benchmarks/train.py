"""Training step time from cached codes vs encoding the audio every step, and peak memory per step.

MusicGen-small's LM architecture (random weights) with the shipped musicgen-small
adapter layout, and an EnCodec with the real 32 kHz MusicGen codec's architecture
(SEANet 64 filters, ratios 8-5-4-4, 2 LSTM layers, 4 x 2048 RVQ; random weights: the
cost of encoding does not depend on the weights). The configurations, timed
interleaved step by step in one process so that each sees the same machine state;
then one more step of each measures its peak memory above what is in use before the
step (the CUDA allocator's peak on a GPU; on Linux CPUs the peak RSS, restarted after
returning freed memory to the OS):

- cached:  codes and features read from a prepared dataset (what ``vidmusician.training.train`` does);
- encode:  the same, but the codes come from encoding the (already decoded) audio each step;
- cached, no checkpointing: the backbone's activations kept for backward;
- cached, 'linear': the preset with the 'linear' semantic encoder instead of the paper's
  't5-lora' (a second model with the same backbone weights), for the cost of the T5 pass;
- cached, plausible targets: the recipes' default ``plausible_targets`` (the others use
  every target, MusicGen's loss), for the cost of the frozen base's forward pass that
  finds the fine-codebook targets it rules out.

    .venv/bin/python benchmarks/train.py [--seconds 5] [--batch 1] [--steps 3] [--device cpu] [--only cached filtered]
                                         [--size small] [--stage 2]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

# name -> (where the codes come from, gradient checkpointing, semantic encoder, recipe plausible_targets)
CONFIGS = {"cached": ("cached", True, "t5-lora", 0.0), "encode": ("encode", True, "t5-lora", 0.0),
           "cached-no-gc": ("cached", False, "t5-lora", 0.0), "cached-linear": ("cached", True, "linear", 0.0),
           "filtered": ("cached", True, "t5-lora", 1e-3)}
LABELS = {"cached": "cached codes (checkpointing)", "encode": "encode the audio each step (checkpointing)",
          "cached-no-gc": "cached codes, no checkpointing", "cached-linear": "cached codes, 'linear' semantic encoder",
          "filtered": "cached codes, plausible targets 1e-3"}


def real_codec(device: str):
    """EnCodec with the architecture of MusicGen's 32 kHz codec (audiocraft's encodec_large_nq4_s640)."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "compression_model": "encodec", "device": device,
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": 32000, "channels": 1,
                    "causal": False, "renormalize": False},
        "seanet": {"dimension": 128, "n_filters": 64, "n_residual_layers": 1, "ratios": [8, 5, 4, 4], "lstm": 2,
                   "norm": "weight_norm", "compress": 2, "encoder": {}, "decoder": {}},
        "rvq": {"n_q": 4, "bins": 2048},
    })
    cm = builders.get_compression_model(cfg).eval()
    cm.quantizer(torch.randn(8, 128, 64, device=device), cm.frame_rate)  # k-means init of the codebooks
    return cm


def write_dataset(root: Path, config, windows: int, seconds: float, frame_rate: float) -> None:
    """A prepared dataset of random codes and features (the trainer cannot tell them from real ones)."""
    from vidmusician.training.dataset import DatasetMeta, ShardWriter
    from vidmusician.video.features import VideoFeatures

    DatasetMeta("random-small", 32000, 1, frame_rate, 4, 2048, config.encoder, config.global_dim, config.local_dim,
                config.global_fps, config.local_fps, seconds, seconds).save(root)
    writer = ShardWriter(root)
    g = torch.Generator().manual_seed(0)
    for i in range(windows):
        codes = torch.randint(0, 2048, (4, int(seconds * frame_rate)), generator=g)
        feats = VideoFeatures(torch.randn(int(seconds * config.global_fps), config.global_dim, generator=g),
                              torch.rand(int(seconds * config.local_fps), config.local_dim, generator=g),
                              config.global_fps, config.local_fps, seconds, config.encoder)
        writer.add({"source": f"s{i}", "split": "train", "text": None}, [(0.0, codes, feats)])
    writer.flush()


def build(args, semantic_encoder: str):
    """The adapted backbone (real codec architecture) and its optimizer."""
    import dataclasses

    from vidmusician.random_backbones import random_musicgen
    from vidmusician.config import load_preset
    from vidmusician.model import attach_adapters

    torch.manual_seed(0)  # the same weights for every semantic encoder
    musicgen = random_musicgen(args.size, device=args.device)
    musicgen.compression_model = real_codec(args.device)
    config = dataclasses.replace(load_preset(f"musicgen-{args.size}"), semantic_encoder=semantic_encoder)
    vm = attach_adapters(musicgen, config)
    vm.set_trainable(["semantic", "rhythm"] if args.stage == 2 else ["semantic"])
    vm.train()
    return vm, torch.optim.AdamW(vm.trainable_parameters(), lr=1e-4)


def step(vm, objective, optimizer, batch, audio, mode: str, args) -> float:
    """One training step; returns its wall time in seconds."""
    _sync(args.device)
    t0 = time.perf_counter()
    batch = batch.to(args.device)
    codes = batch.codes
    if mode == "encode":
        with torch.no_grad():
            codes = vm.musicgen.compression_model.encode(audio)[0]
    with torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
        sums, counts = objective(codes, batch.valid, batch.videos, batch.texts)
    (sums / counts).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(args.device)
    return time.perf_counter() - t0


def run(args) -> dict[str, dict]:
    """Times the configurations interleaved step by step (each sees the same machine state),
    then measures each one's peak memory in one more step."""
    from vidmusician.training.dataset import Collate, PreparedDataset
    from vidmusician.training.objective import Objective

    configs = {name: CONFIGS[name] for name in args.only}
    models = {}
    for encoder in dict.fromkeys(c[2] for c in configs.values()):
        models[encoder] = build(args, encoder)
    vm = next(iter(models.values()))[0]
    cm = vm.musicgen.compression_model
    times = {name: [] for name in configs}
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), vm.config, args.batch, args.seconds, float(cm.frame_rate))
        data = PreparedDataset(tmp)
        collate = Collate(float(cm.frame_rate))
        audio = torch.randn(args.batch, 1, int(args.seconds * cm.sample_rate), device=args.device) * 0.1

        def one(name):
            mode, checkpointing, encoder, plausible_targets = configs[name]
            model, optimizer = models[encoder]
            objective = Objective(model, plausible_targets)
            model.enable_gradient_checkpointing(checkpointing)
            batch = collate([data[i] for i in range(len(data))])  # read from the shards, as the trainer does
            return step(model, objective, optimizer, batch, audio, mode, args)

        for round_ in range(args.steps + 1):
            for name in configs:
                seconds = one(name)
                if round_:  # round 0 warms up allocators and kernels
                    times[name].append(seconds)
        for name in configs:  # apart from the timing: resetting the peak costs page faults
            _reset_peak(args.device)
            before = _current(args.device)
            one(name)
            peaks[name] = (_peak(args.device), _peak(args.device) - before)
    return {name: {"sec_per_step": statistics.median(times[name]), "peak_mb": peaks[name][0],
                   "over_mb": peaks[name][1]} for name in configs}


def _current(device) -> float:
    """Memory in use now, in MB."""
    if torch.device(device).type == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    return _proc_status("VmRSS")


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak(device) -> float:
    """Peak memory in MB since :func:`_reset_peak`: allocated CUDA memory, or the process's RSS on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status("VmHWM")


def _reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    # Hand the memory freed by the previous step back to the OS (glibc keeps it mapped
    # otherwise, and it would hide this step's peak), then restart the peak RSS (VmHWM)
    # from the memory really in use.
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def _proc_status(field: str) -> float:
    """A memory field of /proc/self/status, in MB (Linux)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=None, help="window length (default: 30 on GPU, 5 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="windows per step (default: 8 on GPU, 1 on CPU)")
    p.add_argument("--steps", type=int, default=3, help="timed rounds (after one warmup round)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="small", choices=["small", "medium", "large"], help="LM architecture")
    p.add_argument("--stage", type=int, default=2, choices=[1, 2],
                   help="what trains: 1 the semantic adapter, 2 the semantic and rhythmic ones (default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default on GPU)")
    p.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), metavar="NAME",
                   help=f"time only these configurations (of {', '.join(CONFIGS)})")
    args = p.parse_args()
    gpu = torch.device(args.device).type == "cuda"
    args.seconds = args.seconds or (30.0 if gpu else 5.0)
    args.batch = args.batch or (8 if gpu else 1)
    args.bf16 = args.bf16 or gpu
    results = run(args)

    device = torch.cuda.get_device_name() if gpu else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"MusicGen-{args.size} LM + musicgen-{args.size} adapters (t5-lora unless named), stage {args.stage} "
          f"({'semantic + rhythm' if args.stage == 2 else 'semantic'}) training; "
          f"{device}; torch {torch.__version__}")
    print(f"batch {args.batch} x {args.seconds:g} s windows, bf16 autocast {'on' if args.bf16 else 'off'}, "
          f"median of {args.steps} interleaved rounds after a warmup round\n")
    print(f"{'configuration':<44}{'s/step':>9}{'peak MB':>10}{'peak over step start MB':>25}")
    for name, r in results.items():
        print(f"{LABELS[name]:<44}{r['sec_per_step']:>9.3f}{r['peak_mb']:>10.0f}{r['over_mb']:>25.0f}")
    print()
    ratios = [("encode audio / cached codes, step time", "encode", "cached", "sec_per_step"),
              ("checkpointing / none, step time", "cached", "cached-no-gc", "sec_per_step"),
              ("checkpointing / none, peak over start", "cached", "cached-no-gc", "over_mb"),
              ("t5-lora / linear, step time", "cached", "cached-linear", "sec_per_step"),
              ("plausible targets / every target, step time", "filtered", "cached", "sec_per_step"),
              ("plausible targets / every target, peak", "filtered", "cached", "peak_mb")]
    for label, a, b, key in ratios:
        if a in results and b in results:
            floor = 1e-9 if key == "sec_per_step" else 1  # MB: a peak under 1 MB above the start is noise
            print(f"{label + ':':<46}{results[a][key] / max(results[b][key], floor):.2f}x")


if __name__ == "__main__":
    main()
