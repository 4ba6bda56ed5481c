"""Benchmark of `vidmusician prepare`: videos/s with per-video and cross-video encoder batches, one and two processes.

Writes synthetic music videos (moving pattern, libx264; noise as music in a WAV
beside each), then prepares them side by side in one run: in rounds, one
process with the visual encoder's batches filled within each video
(``--per-video-batches``, the former path, at its batch of 64 frames), one
process with batches that span videos (the default), and two processes
(``accelerate launch --multi_gpu --num_processes 2 -m vidmusician.training.prepare``, gloo
on the CPU). The one-process runs alternate which goes first, round by round,
so that a change of load on a shared machine hits both. It prints videos/s of
each, by the wall clock (process start and model loading included) and on the
videos (from the first video to the last), the ratio of the two kinds per round,
and the ratio of two processes to one; then the time per stage (audio decode,
the wait for video decode + encoder, codec, shard writes) and, measured alone on
the same videos, video decode and the visual encoder, as shares of the
cross-video run's stage time.

Run from the repository root::

    .venv/bin/python benchmarks/prepare.py                        # tiny models, 8 videos of 10 s
    .venv/bin/python benchmarks/prepare.py --encoder ViT-B-32 --backbone random-encodec --videos 6 --seconds 3
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import re
import statistics
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
    """Wall seconds of one prepare run, its seconds on the videos (the slowest process's), process 0's per stage."""
    cmd = launcher + [str(pairs), str(out), "--backbone", args.backbone, "--encoder", args.encoder,
                      "--holdout", "0", "--device", "cpu", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"prepare failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    lines = [ln.split("(") for ln in proc.stdout.splitlines() if ln.strip().startswith("seconds:")]
    elapsed = max(float(e.split()[0]) for _, e in lines)
    return wall, elapsed, {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", lines[0][0])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    p.add_argument("--backbone", default="tiny",
                   help="whose codec encodes the music (default: the tiny codec; random-encodec: the real codec's "
                        "architecture, random weights)")
    p.add_argument("--encoder", default="tiny", help="visual encoder spec (ViT-B-32: B/32 compute, random weights)")
    p.add_argument("--threads", type=int, default=1, help="threads per process (default 1: two processes, two cores)")
    p.add_argument("--encoder-batch", type=int, default=64,
                   help="frames per batch across videos (default 64, prepare's default on a CPU)")
    p.add_argument("--rounds", type=int, default=2, help="one-process runs of each kind, alternating (default 2)")
    p.add_argument("--per-video-batch", type=int, default=64,
                   help="frames per batch within a video, the former path (default 64, its former batch)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)  # the measurements alone run as each prepare process does
    bench = features_benchmark()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = make_pairs(tmp, args.videos, args.seconds, bench.make_video)
        cli = [sys.executable, "-m", "vidmusician", "prepare"]
        runs = {"per-video": [], "across": []}  # (wall, seconds on the videos, stages) per round
        for r in range(args.rounds):  # alternating which goes first: a change of load hits both sides alike
            for side in ("per-video", "across") if r % 2 == 0 else ("across", "per-video"):
                extra = (["--per-video-batches", "--encoder-batch", str(args.per_video_batch)] if side == "per-video"
                         else ["--encoder-batch", str(args.encoder_batch)])
                runs[side].append(run_prepare(cli, pairs, tmp / f"{side}{r}", args, *extra))
        two, two_videos, _ = run_prepare([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                                 "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                 "--main_process_port", str(29600 + os.getpid() % 1000), "-m", "vidmusician.training.prepare"],
                                pairs, tmp / "two", args, "--encoder-batch", str(args.encoder_batch))
        decode = sum(bench.measure("decode", str(tmp / f"v{i}.mp4"), args.encoder, 64)["seconds"]
                     for i in range(args.videos))
        encode = sum(bench.measure("encode", str(tmp / f"v{i}.mp4"), args.encoder, 64)["seconds"]
                     for i in range(args.videos))

    n = args.videos
    print(f"{n} videos of {args.seconds:g} s, backbone {args.backbone}, encoder {args.encoder}, "
          f"{args.threads} thread(s) per process, {os.cpu_count()} CPUs, load average {load} at the start")
    for side, label in (("per-video", f"per-video batches of {args.per_video_batch}"),
                        ("across", f"batches of {args.encoder_batch} across videos")):
        print(f"1 process, {label}: " + ", ".join(f"{n / videos:.3f}" for _, videos, _ in runs[side])
              + " videos/s on the videos (" + ", ".join(f"{n / wall:.3f}" for wall, _, _ in runs[side])
              + " by the wall clock) in rounds " + ", ".join(str(r + 1) for r in range(args.rounds)))
    ratios = [a[1] / b[1] for a, b in zip(runs["per-video"], runs["across"])]
    print("ratio across/per-video, on the videos, per round: " + ", ".join(f"{x:.3f}" for x in ratios)
          + f"   median {statistics.median(ratios):.3f}")
    one, one_videos, stages = runs["across"][-1]
    print(f"2 processes, across videos: {n / two_videos:.3f} videos/s on the videos ({n / two:.3f} by the wall "
          f"clock)   ratio 2/1 (1 process: its last round): {one_videos / two_videos:.2f} on the videos, "
          f"{one / two:.2f} by the wall clock")
    for side in ("per-video", "across"):
        st = runs[side][-1][2]
        print(f"1 process, {side}, last round, seconds per stage: "
              + ", ".join(f"{k} {v:.2f} ({v / sum(st.values()):.0%})" for k, v in st.items()))
    total = sum(stages.values())
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"measured alone: video decode {decode:.2f} s ({decode / total:.0%}), "
          f"visual encoder {encode:.2f} s ({encode / total:.0%}) of the across run's stage time")


if __name__ == "__main__":
    main()
