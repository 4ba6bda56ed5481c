"""Benchmark of the video front end: decode alone, encoder alone, the whole pipeline.

Writes synthetic videos (moving pattern, libx264) of the given lengths, then runs
each measurement in its own Python process so peak memory is per measurement:

- decode: every frame the pipeline needs, decoded at the encoder's input size, in
  the pipeline's chunks (no encoding);
- encode: the encoder on already-decoded frames, as many as the video needs;
- pipeline: ``extract_features`` (decode in a thread overlapping the encoder).

It prints frames/s for each, pipeline/decode (1.0 means encoding hides entirely
behind decoding), pipeline/serial (serial = decode then encode, no overlap), and
peak RSS of the pipeline process above its RSS after imports and encoder load
(the goal: flat from 1 to 10 minutes).

Run from the repository root::

    .venv/bin/python benchmarks/features.py                      # tiny encoder, 1 and 10 minutes
    .venv/bin/python benchmarks/features.py --encoder ViT-B-32 --minutes 1   # B/32 compute, random weights
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path


def make_video(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    """A moving gradient with drifting blocks and a scene change every 4 s, streamed to libx264."""
    import av
    import numpy as np

    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            t = i / fps
            scene = int(t // 4)
            base = 127 + 100 * np.sin((xx * (1 + scene % 3) + yy + 40 * t) / 37.0)
            frame = np.stack([base, np.roll(base, 30 * scene, axis=1), 255 - base], axis=-1)
            x0 = int(t * 60) % (width - 64)
            frame[height // 3 : height // 3 + 64, x0 : x0 + 64] = (255, 255, 0)
            vf = av.VideoFrame.from_ndarray(frame.clip(0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(vf))
        container.mux(stream.encode())
    return path


def measure(mode: str, video: str, encoder_spec: str, batch_size: int) -> dict:
    """One measurement in this process: seconds, frames and memory (MB)."""
    import numpy as np
    import torch

    from vidmusician.video.features import extract_features, load_encoder
    from vidmusician.video.prefetch import prefetch
    from vidmusician.video.reader import FrameReader, sample_times

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" for a B/32 compute benchmark
        encoder = load_encoder(encoder_spec, device="cpu")
    reader = FrameReader(video, size=encoder.resize_size)
    duration = reader.info.duration
    frames = np.union1d(reader.indices_at(sample_times(duration, 1.0)), reader.indices_at(sample_times(duration, 25.0)))
    chunks = [frames[i : i + batch_size] for i in range(0, len(frames), batch_size)]
    encoder.encode(reader.read(chunks[0]))  # warm-up: first-call allocations
    base_mb = _rss_mb()
    start = time.perf_counter()
    if mode == "decode":
        for _ in prefetch(reader, chunks):
            pass
    elif mode == "encode":
        batch = reader.read(chunks[0])
        for chunk in chunks:
            encoder.encode(batch[: len(chunk)])
    else:
        extract_features(video, encoder, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "frames": int(len(frames)), "base_mb": base_mb, "peak_mb": _rss_mb(),
            "threads": torch.get_num_threads(), "input": list(reader.size)}


def _rss_mb() -> float:
    # ru_maxrss is the peak resident set size so far, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(mode: str, video: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(video), "--encoder", args.encoder,
           "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="tiny", help="encoder spec (default tiny; ViT-B-32: B/32, random weights)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10], help="video lengths (default 1 10)")
    parser.add_argument("--size", default="640x360", help="video WIDTHxHEIGHT (default 640x360)")
    parser.add_argument("--fps", type=int, default=25, help="video frame rate (default 25)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per measurement; the best is kept (default 3)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the videos here (default: a temp dir)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "VIDEO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.encoder, args.batch_size)))
        return

    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"encoder {args.encoder}, video {width}x{height} @ {args.fps} fps, batch {args.batch_size}")
        header = (f"{'video':>7} {'frames':>7} {'input':>8} {'decode f/s':>10} {'encode f/s':>10} "
                  f"{'pipeline f/s':>12} {'pipe/decode':>11} {'pipe/serial':>11} {'peak MB':>8} {'+MB':>6}")
        print(header)
        for minutes in args.minutes:
            video = workdir / f"bench_{minutes:g}min_{width}x{height}.mp4"
            if not video.exists():
                t = time.perf_counter()
                make_video(video, minutes * 60, args.fps, width, height)
                print(f"  (wrote {video.name} in {time.perf_counter() - t:.0f} s)", file=sys.stderr)
            # Interleaved rounds, best time of each: the least disturbed by other load.
            runs = [{mode: run_child(mode, video, args) for mode in ("decode", "encode", "pipeline")}
                    for _ in range(args.repeat)]
            r = {mode: min((run[mode] for run in runs), key=lambda m: m["seconds"]) for mode in runs[0]}
            peak = max(run["pipeline"]["peak_mb"] for run in runs)
            growth = max(run["pipeline"]["peak_mb"] - run["pipeline"]["base_mb"] for run in runs)
            fps = {mode: r[mode]["frames"] / r[mode]["seconds"] for mode in r}
            serial = r["decode"]["seconds"] + r["encode"]["seconds"]
            p = r["pipeline"]
            print(f"{minutes:>5g} m {p['frames']:>7d} {'x'.join(map(str, p['input'])):>8} {fps['decode']:>10.0f} "
                  f"{fps['encode']:>10.0f} {fps['pipeline']:>12.0f} {fps['pipeline'] / fps['decode']:>11.2f} "
                  f"{serial / p['seconds']:>11.2f} {peak:>8.0f} {growth:>6.0f}")
        print(f"torch threads: {r['pipeline']['threads']}; pipe/serial > 1 means decode and encode overlapped")
        # Other processes on the machine move every number here; say how busy it was.
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
