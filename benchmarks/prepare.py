"""Benchmark of `vidmusician prepare`: videos/s with per-video and cross-video encoder batches, one and two processes.

Writes synthetic music videos (moving pattern, libx264; noise as music in a WAV
beside each), then prepares them three times, side by side in one run: one
process with the visual encoder's batches filled within each video
(``--per-video-batches``, the former path, at its batch of 64 frames), one
process with batches that span videos (the default), and two processes
(``accelerate launch --multi_gpu --num_processes 2 -m vidmusician.prepare``, gloo
on the CPU). It prints videos/s of each, by the wall clock (process start and
model loading included) and by the time spent on the videos (the sum of the
stages: no start, no loading), and the ratios; then the cross-video run's time
per stage (audio decode, the wait for video decode + encoder, codec, shard
writes) and, measured alone on the same videos, video decode and the visual
encoder, as shares of that run's stage time.

Run from the repository root::

    .venv/bin/python benchmarks/prepare.py                        # tiny models, 8 videos of 10 s
    .venv/bin/python benchmarks/prepare.py --encoder ViT-B-32 --backbone random-small --videos 8 --seconds 4
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def features_benchmark():
    """benchmarks/features.py as a module: its video maker and its decode / encoder measurements."""
    spec = importlib.util.spec_from_file_location("benchmark_features", Path(__file__).with_name("features.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_pairs(folder: Path, n: int, seconds: float, make_video) -> Path:
    """``n`` videos with a WAV of noise each, listed in ``pairs.csv``."""
    import numpy as np
    import soundfile as sf

    with open(folder / "pairs.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["video", "audio"])
        for i in range(n):
            make_video(folder / f"v{i}.mp4", seconds, 25, 160, 120)
            noise = np.random.default_rng(i).uniform(-0.5, 0.5, int(seconds * 32000)).astype(np.float32)
            sf.write(folder / f"v{i}.wav", noise, 32000)
            rows.writerow([f"v{i}.mp4", f"v{i}.wav"])
    return folder / "pairs.csv"


def run_prepare(launcher: list[str], pairs: Path, out: Path, args, *extra: str) -> tuple[float, float, dict]:
    """Wall seconds of one prepare run, and of its process 0: seconds on the videos and per stage."""
    cmd = launcher + [str(pairs), str(out), "--backbone", args.backbone, "--encoder", args.encoder,
                      "--holdout", "0", "--device", "cpu", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"prepare failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("seconds:"))
    stages, elapsed = line.split("(")
    return wall, float(elapsed.split()[0]), {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", stages)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    p.add_argument("--backbone", default="tiny",
                   help="whose codec encodes the music (default: the tiny codec; random-small: the real codec's "
                        "architecture, random weights)")
    p.add_argument("--encoder", default="tiny", help="visual encoder spec (ViT-B-32: B/32 compute, random weights)")
    p.add_argument("--threads", type=int, default=1, help="threads per process (default 1: two processes, two cores)")
    p.add_argument("--encoder-batch", type=int, default=256, help="frames per batch across videos (default 256)")
    p.add_argument("--per-video-batch", type=int, default=64,
                   help="frames per batch within a video, the former path (default 64, its former batch)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)  # the measurements alone run as each prepare process does
    bench = features_benchmark()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = make_pairs(tmp, args.videos, args.seconds, bench.make_video)
        cli = [sys.executable, "-m", "vidmusician", "prepare"]
        alone, alone_videos, alone_stages = run_prepare(cli, pairs, tmp / "alone", args, "--per-video-batches",
                                          "--encoder-batch", str(args.per_video_batch))
        one, one_videos, stages = run_prepare(cli, pairs, tmp / "one", args, "--encoder-batch", str(args.encoder_batch))
        two, _, _ = run_prepare([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                              "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                              "--main_process_port", str(29600 + os.getpid() % 1000), "-m", "vidmusician.prepare"],
                             pairs, tmp / "two", args, "--encoder-batch", str(args.encoder_batch))
        decode = sum(bench.measure("decode", str(tmp / f"v{i}.mp4"), args.encoder, 64)["seconds"]
                     for i in range(args.videos))
        encode = sum(bench.measure("encode", str(tmp / f"v{i}.mp4"), args.encoder, 64)["seconds"]
                     for i in range(args.videos))

    n, total, total_alone = args.videos, sum(stages.values()), sum(alone_stages.values())
    print(f"{n} videos of {args.seconds:g} s, backbone {args.backbone}, encoder {args.encoder}, "
          f"{args.threads} thread(s) per process, {os.cpu_count()} CPUs")
    print(f"1 process, per-video batches of {args.per_video_batch}: {n / alone:.3f} videos/s ({alone:.1f} s wall), "
          f"{n / alone_videos:.3f} on the videos ({alone_videos:.1f} s)")
    print(f"1 process, batches of {args.encoder_batch} across videos: {n / one:.3f} videos/s ({one:.1f} s wall), "
          f"{n / one_videos:.3f} on the videos ({one_videos:.1f} s)   ratio across/per-video: {alone / one:.2f} "
          f"wall, {alone_videos / one_videos:.2f} on the videos")
    print(f"2 processes, across videos: {n / two:.3f} videos/s ({two:.1f} s wall)   ratio 2/1: {one / two:.2f}")
    print("1 process, per-video batches, seconds per stage: "
          + ", ".join(f"{k} {v:.2f} ({v / total_alone:.0%})" for k, v in alone_stages.items()))
    print("1 process, across videos, seconds per stage: " + ", ".join(f"{k} {v:.2f} ({v / total:.0%})" for k, v in stages.items()))
    print(f"measured alone: video decode {decode:.2f} s ({decode / total:.0%}), "
          f"visual encoder {encode:.2f} s ({encode / total:.0%}) of the stage time")


if __name__ == "__main__":
    main()
