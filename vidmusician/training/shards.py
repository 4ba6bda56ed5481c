"""The files of a prepared dataset: index lines (JSONL) and shards of cached codes and features.

Layout of a dataset folder (written by :mod:`vidmusician.training.prepare`)::

    dataset.json        what made it: backbone codec, visual encoder, window, fps
    index.jsonl         one line per window: source, start, length, shard, split, text
    index.part-R.jsonl  the lines written by process R of a multi-process run
                        (merged into index.jsonl when the run ends)
    shards/<hash>.safetensors
                        one shard per source, named by a hash of its id (older
                        datasets: NNNNNN.safetensors of several sources): per window
                        ``<key>.codes`` [K, T] int16, ``<key>.global`` [Tg, Dg] and
                        ``<key>.local`` [Tl, P] float16
    errors.jsonl        sources that could not be used, with the reason
                        (``errors.part-R.jsonl`` while a multi-process run goes on)

A shard is written under a temporary name, synced and renamed; its index lines
are appended (in one write, synced) after the rename, so every index line points
at a complete shard. A source is done when all its windows are in one index file
(each line says how many its source has); a torn last line or a partly indexed
source is redone. Readers take the union of the index files, one row per
(source, window), sorted by (source, window): the dataset is the same whatever
the number of processes that wrote it and the order they finished in.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from ..fileio import atomic_write

if TYPE_CHECKING:  # torch only where tensors are written: `vidmusician train` looks for META_NAME before it loads
    import torch

    from ..video.features import VideoFeatures

META_NAME = "dataset.json"
INDEX_NAME = "index.jsonl"
# Index and error lines of process R of a multi-process run, until the run merges them.
INDEX_PART = "index.part-{rank}.jsonl"
ERRORS_PART = "errors.part-{rank}.jsonl"
# What every index line holds (``shard_bytes`` and ``shard_crc32`` too since format 2).
INDEX_KEYS = ("source", "split", "shard", "key", "window", "windows", "seconds", "frames")
ERRORS_NAME = "errors.jsonl"
SHARD_DIR = "shards"
FORMAT_VERSION = 2  # 2: index lines carry each shard's size and CRC-32


def check_prepared(root) -> Path:
    """The description of the dataset in folder ``root`` (:data:`META_NAME`); a DataError when there is none."""
    path = Path(root) / META_NAME
    if not path.is_file():
        raise DataError(f"{root}: not a prepared dataset (no {META_NAME}); run `vidmusician prepare SRC {root}`")
    return path


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a kill mid-append, no newline yet) is dropped.

    Any other line that is not a JSON object with the ``required`` keys is damage
    no kill can cause: a DataError names the file and the line.
    """
    if not path.is_file():
        return []
    # One read: judged from the same bytes, so an append by another process in between
    # cannot make a torn line look like damage.
    data = path.read_bytes()
    torn = bool(data) and not data.endswith(b"\n")
    lines = data.decode(errors="replace").splitlines()
    rows = []
    for n, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and all(k in row for k in required):
            rows.append(row)
        elif not (torn and n == len(lines)):
            raise DataError(f"{path}: line {n} is damaged; delete that line (its source is prepared again by "
                            f"the next `vidmusician prepare`) or prepare the dataset anew")
    return rows


def has_torn_tail(path: Path) -> bool:
    """Whether a JSONL file ends in a partial line (a kill mid-append)."""
    return path.is_file() and path.stat().st_size > 0 and not _ends_with_newline(path)


def write_jsonl(path: Path, rows) -> None:
    """Writes ``path`` whole with these rows, under a temporary name, synced, then renamed over it."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), durable=True)


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Appends rows in one write and syncs, so a kill leaves at most one torn line."""
    if not rows:
        return
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if has_torn_tail(path):  # cut off a line a kill left half-written, so it never ends up mid-file
        data = path.read_bytes()
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def complete_rows(rows: list[dict]) -> list[dict]:
    """Index rows of the sources whose windows are all present."""
    count: dict[str, int] = {}
    for r in rows:
        count[r["source"]] = count.get(r["source"], 0) + 1
    return [r for r in rows if count[r["source"]] == r["windows"]]


def file_crc32(path) -> int:
    """CRC-32 of a file's bytes, read in blocks (the shards' integrity record)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return crc


def index_files(root, name: str = INDEX_NAME, part: str = INDEX_PART) -> list[Path]:
    """The merged file and the per-process parts of a dataset's index (or errors), in a fixed order."""
    root = Path(root)
    parts = sorted(root.glob(part.format(rank="*")), key=lambda p: p.name)
    return [root / name] + parts


def dataset_rows(root) -> list[dict]:
    """The index rows of every complete source, from all index files, sorted by (source, window).

    A source is complete when all its windows are in one file; a (source, window)
    found in two files (a merge cut short by a kill) counts once.
    """
    rows: dict[tuple, dict] = {}
    for path in index_files(root):
        for r in complete_rows(read_jsonl(path, INDEX_KEYS)):
            rows.setdefault((r["source"], r["window"]), r)
    return [rows[k] for k in sorted(rows)]


def split_counts(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """Videos and windows per split (``train``, ``holdout``) of :func:`dataset_rows`' rows."""
    counts = {}
    for split in ("train", "holdout"):
        mine = [r for r in rows if r["split"] == split]
        counts[split] = (len({r["source"] for r in mine}), len(mine))
    return counts


def error_rows(root) -> list[dict]:
    """The sources listed as bad in ``errors.jsonl`` and its parts, each once, sorted by source."""
    rows: dict[str, dict] = {}
    for path in index_files(root, ERRORS_NAME, ERRORS_PART):
        for r in read_jsonl(path, ("source",)):
            rows.setdefault(r["source"], r)
    return [rows[k] for k in sorted(rows)]


def shard_name(source_id: str) -> str:
    """The shard of one source: named by its id's hash, so any process writes the same file for it."""
    return hashlib.sha1(source_id.encode()).hexdigest()[:20] + ".safetensors"


def _window_tensors(key: str, codes: torch.Tensor, feats: VideoFeatures) -> dict[str, torch.Tensor]:
    import torch

    return {f"{key}.codes": codes.to(torch.int16).cpu().contiguous(),
            f"{key}.global": feats.global_feats.to(torch.float16).cpu().contiguous(),
            f"{key}.local": feats.local_feats.to(torch.float16).cpu().contiguous()}


def _window_row(source: dict, shard: str, key: str, i: int, n: int, start: float, codes, feats) -> dict:
    return dict(source, shard=shard, key=key, window=i, windows=n, start=round(start, 6),
                seconds=round(feats.duration, 6), frames=int(codes.shape[-1]))


def _write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Writes a shard atomically (synced before the rename); returns its integrity record."""
    from safetensors.torch import save

    # Serialized once in memory: the record is taken from the bytes written, not read back.
    data = save(tensors, metadata={"format": "vidmusician.training.dataset"})

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before its name, and before index lines point at it

    atomic_write(path, write)
    return {"shard_bytes": len(data), "shard_crc32": zlib.crc32(data)}


def commit_source(root, index: Path, source: dict, windows: list[tuple[float, torch.Tensor, VideoFeatures]]) -> None:
    """Writes all windows of one source as its own shard, then appends their index lines to ``index``.

    What a kill at any moment leaves: no shard, or a complete shard without
    (or with a torn part of) its index lines; readers and reruns take only
    sources whose lines are all present, so a source is either done or redone.

    Args:
        root: dataset folder.
        index: the index file this process appends to (``index.jsonl`` or its part).
        source: ``{"source": id, "split": ..., "text": ...}`` copied into each index line.
        windows: ``(start seconds, codes [K, T], features of the window)`` per window.
    """
    root = Path(root)
    (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    name = shard_name(source["source"])
    tensors, rows = {}, []
    for i, (start, codes, feats) in enumerate(windows):
        tensors.update(_window_tensors(str(i), codes, feats))
        rows.append(_window_row(source, name, str(i), i, len(windows), start, codes, feats))
    record = _write_shard(root / SHARD_DIR / name, tensors)
    # The integrity record travels in the index lines, which are written after the shard.
    append_jsonl(index, [dict(row, **record) for row in rows])


class ShardWriter:
    """Collects windows of several sources into numbered shards plus index lines (tests, benchmarks).

    Windows of one source go into the same shard, and a source's index lines are
    written together after its shard is complete. ``vidmusician prepare`` writes
    one shard per source instead (:func:`commit_source`).
    """

    def __init__(self, root, shard_windows: int = 256):
        self.root = Path(root)
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self.shard_windows = shard_windows
        existing = [int(p.stem) for p in (self.root / SHARD_DIR).glob("*.safetensors") if p.stem.isdigit()]
        # Never reuse a shard name: index lines of an earlier run may point at it.
        self._next = max(existing, default=-1) + 1
        self._tensors: dict[str, torch.Tensor] = {}
        self._rows: list[dict] = []

    def add(self, source: dict, windows: list[tuple[float, torch.Tensor, VideoFeatures]]) -> None:
        """Adds all windows of one source.

        Args:
            source: ``{"source": id, "split": ..., "text": ...}`` copied into each index line.
            windows: ``(start seconds, codes [K, T], features of the window)`` per window.
        """
        name = f"{self._next:06d}.safetensors"
        for i, (start, codes, feats) in enumerate(windows):
            key = f"{len(self._rows)}"
            self._tensors.update(_window_tensors(key, codes, feats))
            self._rows.append(_window_row(source, name, key, i, len(windows), start, codes, feats))
        if len(self._rows) >= self.shard_windows:
            self.flush()

    def flush(self) -> None:
        """Writes the pending shard, then its index lines."""
        if not self._rows:
            return
        record = _write_shard(self.root / SHARD_DIR / self._rows[0]["shard"], self._tensors)
        append_jsonl(self.root / INDEX_NAME, [dict(row, **record) for row in self._rows])
        self._next += 1
        self._tensors, self._rows = {}, []
