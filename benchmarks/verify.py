"""What a full check of a prepared dataset costs (``vidmusician prepare --verify``).

Writes a dataset of MusicGen-small sized windows (30 s: 4 x 1500 codes, 30 x 512 global
and 750 x 49 local features), then times side by side, from the page cache:

- the full check (:func:`vidmusician.training.dataset.verify_dataset`: each shard's size and
  CRC-32, each window read and checked as training reads it);
- reading every window once through the dataset, as one epoch of training reads them;
- the CRC-32 of every shard alone.

    python benchmarks/verify.py --sources 200 --windows 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vidmusician.training.dataset import (SHARD_DIR, DatasetMeta, PreparedDataset, commit_source, file_crc32,
                                          verify_dataset)
from vidmusician.video.features import VideoFeatures


def write(root: Path, sources: int, windows: int) -> int:
    DatasetMeta("facebook/musicgen-small", 32000, 1, 50.0, 4, 2048, "ViT-B-32:openai", 512, 49, 30.0, 30.0,
                1.0, 25.0).save(root)
    g = torch.Generator().manual_seed(0)
    for s in range(sources):
        wins = [(30.0 * w, torch.randint(0, 2048, (4, 1500), generator=g),
                 VideoFeatures(torch.randn(30, 512, generator=g), torch.rand(750, 49, generator=g), 1.0, 25.0, 30.0,
                               "ViT-B-32:openai")) for w in range(windows)]
        commit_source(root, root / "index.jsonl", {"source": f"v{s}", "split": "train" if s % 20 else "holdout",
                                                   "text": None}, wins)
    return sum(p.stat().st_size for p in (root / SHARD_DIR).iterdir())


def timed(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=200)
    parser.add_argument("--windows", type=int, default=4, help="30 s windows per source")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = write(root, args.sources, args.windows)

        def epoch():
            for split in ("train", "holdout"):
                data = PreparedDataset(root, split)
                for i in range(len(data)):
                    data[i]

        def crcs():
            for p in (root / SHARD_DIR).iterdir():
                file_crc32(p)

        check, read, crc = (timed(f, args.rounds) for f in (lambda: verify_dataset(root), epoch, crcs))
    n = args.sources * args.windows
    print(f"{args.sources} sources x {args.windows} windows of 30 s = {n} windows, {size / 1e6:.0f} MB of shards, "
          f"{torch.get_num_threads()} threads, median of {args.rounds}")
    print(f"| full check (prepare --verify) | {check:.2f} s | {1e3 * check / n:.2f} ms/window | "
          f"{size / 1e9 / check:.2f} GB/s |")
    print(f"| one epoch of reads (training) | {read:.2f} s | ratio check / epoch: {check / read:.2f} |")
    print(f"| CRC-32 of the shards alone | {crc:.2f} s | share of the check: {crc / check:.2f} |")
    print(f"a dataset of 10,000 hours (1.2M windows) would take about {check / n * 1.2e6 / 60:.0f} min to check")


if __name__ == "__main__":
    main()
