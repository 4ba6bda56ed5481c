"""A prepared dataset on disk: cached codec codes and visual features of fixed windows.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..adapter.context import VideoBatch
from ..errors import DataError, differing_fields, one_line
from ..fileio import atomic_write, native_name
from ..video.encoder_specs import legacy_activation
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


@dataclass
class DatasetMeta:
    """What a prepared dataset was made with; training checks it against the backbone and adapter."""

    backbone: str
    sample_rate: int
    channels: int
    frame_rate: float
    n_q: int
    card: int
    encoder: str
    global_dim: int
    local_dim: int
    global_fps: float
    local_fps: float
    window: float
    hop: float
    format_version: int = FORMAT_VERSION
    # MLP activation of the encoder ('quick_gelu'/'gelu'); datasets prepared before
    # it was recorded load with the one those versions built (legacy_activation).
    encoder_activation: str | None = None

    def save(self, root: Path) -> None:
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        atomic_write(Path(root) / META_NAME, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, root) -> "DatasetMeta":
        path = Path(root) / META_NAME
        if not path.is_file():
            raise DataError(f"{root}: not a prepared dataset (no {META_NAME}); run `vidmusician prepare SRC {root}`")
        try:
            data = json.loads(path.read_text())
            if "encoder_activation" not in data:
                data["encoder_activation"] = legacy_activation(data.get("encoder"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: unreadable dataset description ({exc})") from None

    def differences(self, other: "DatasetMeta") -> str:
        """Fields that differ (other than the version), in one line ('name: mine vs theirs; ...'; '' when none)."""
        return differing_fields(self, other, [k for k in asdict(self) if k != "format_version"])


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


@dataclass
class Example:
    """One window: codes [K, T] (int64), its video features, and optional text."""

    codes: torch.Tensor
    features: VideoFeatures
    text: str | None


class PreparedDataset(torch.utils.data.Dataset):
    """The windows of one split of a prepared dataset, read lazily from the shards.

    Args:
        root: Dataset folder written by ``vidmusician prepare``.
        split: ``"train"`` or ``"holdout"``.
    """

    def __init__(self, root, split: str = "train"):
        self.root = Path(root)
        self.meta = DatasetMeta.load(self.root)
        self.rows = [r for r in dataset_rows(self.root) if r["split"] == split]
        self.split = split
        self.has_text = any(r.get("text") for r in self.rows)
        self._records = {r["shard"]: (r.get("shard_bytes"), r.get("shard_crc32")) for r in self.rows}
        self._shards: dict[str, object] = {}  # opened lazily, per DataLoader worker

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        from safetensors import SafetensorError

        row = self.rows[i]
        shard = self._open(row["shard"])
        key, m = row["key"], self.meta
        try:
            codes = shard.get_tensor(f"{key}.codes")
            global_feats, local_feats = shard.get_tensor(f"{key}.global"), shard.get_tensor(f"{key}.local")
        except (SafetensorError, OSError) as exc:
            raise self._damaged(row["shard"], f"window {key} unreadable: {one_line(exc)}") from None
        self._check(row, codes, global_feats, local_feats)
        feats = VideoFeatures(global_feats.float(), local_feats.float(), m.global_fps, m.local_fps,
                              float(row["seconds"]), m.encoder, m.encoder_activation)
        return Example(codes.long(), feats, row.get("text"))

    def _check(self, row: dict, codes, global_feats, local_feats) -> None:
        """What training would trip over deep inside the model, named here with its shard."""
        m, key = self.meta, row["key"]
        problem = None
        if codes.dim() != 2 or tuple(codes.shape) != (m.n_q, int(row["frames"])):
            problem = f"codes of shape {tuple(codes.shape)}, expected ({m.n_q}, {row['frames']})"
        elif codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= m.card):
            problem = f"codes outside the codebook of {m.card}"
        elif global_feats.dim() != 2 or global_feats.shape[-1] != m.global_dim or not len(global_feats):
            problem = f"global features of shape {tuple(global_feats.shape)}, expected (T, {m.global_dim})"
        elif local_feats.dim() != 2 or local_feats.shape[-1] != m.local_dim or not len(local_feats):
            problem = f"local features of shape {tuple(local_feats.shape)}, expected (T, {m.local_dim})"
        elif not (torch.isfinite(global_feats).all() and torch.isfinite(local_feats).all()):
            problem = "features that are not finite"
        if problem:
            raise self._damaged(row["shard"], f"window {key} has {problem}")

    def _damaged(self, name: str, problem: str) -> DataError:
        path = self.root / SHARD_DIR / name
        return DataError(f"{path}: damaged shard ({problem}); delete it and its lines in {INDEX_NAME}, "
                         f"then rerun `vidmusician prepare` to redo those sources")

    def _open(self, name: str):
        from safetensors import SafetensorError, safe_open

        if name not in self._shards:
            path = self.root / SHARD_DIR / name
            size, crc = self._records.get(name, (None, None))
            try:
                if size is not None and path.stat().st_size != size:
                    raise self._damaged(name, f"{path.stat().st_size} bytes, {size} were written")
                if crc is not None and file_crc32(path) != crc:
                    raise self._damaged(name, "its checksum differs from the one written by prepare")
                with native_name(path) as native:  # safetensors takes the name as UTF-8 text
                    self._shards[name] = safe_open(native, framework="pt")
            except (SafetensorError, OSError) as exc:
                raise self._damaged(name, f"unreadable: {one_line(exc)}") from None
        return self._shards[name]


def verify_dataset(root, full: bool = True, progress=None) -> tuple[int, int]:
    """Checks every shard of a prepared dataset now, not when a run first draws one of its windows.

    Args:
        root: dataset folder.
        full: read everything as training reads it: each shard's size and checksum
            against the record ``prepare`` wrote, each window's tensors through the
            checks training applies (:class:`PreparedDataset`); about 0.6 ms a
            30 s window (``benchmarks/verify.py``). False: each shard is there with
            the size written (one ``stat`` a shard): what a full disk, a copy cut short
            or a deleted file leaves, found at no cost; other damage is found when read.
        progress: called with ``(windows checked, windows)`` after every window (``full``).

    Returns:
        ``(shards, windows)`` checked.

    Raises:
        DataError: naming the first damaged shard and what is wrong with it.
    """
    splits = [PreparedDataset(root, split) for split in ("train", "holdout")]
    if not full:
        records = {name: size for data in splits for name, (size, _) in data._records.items()}
        for name, size in sorted(records.items()):
            path = Path(root) / SHARD_DIR / name
            try:
                found = path.stat().st_size
            except OSError as exc:
                raise splits[0]._damaged(name, "missing" if isinstance(exc, FileNotFoundError)
                                         else one_line(exc)) from None
            if size is not None and found != size:
                raise splits[0]._damaged(name, f"{found} bytes, {size} were written")
        return len(records), sum(len(s) for s in splits)
    total, done, shards = sum(len(s) for s in splits), 0, set()
    for data in splits:
        for i in range(len(data)):
            data[i]  # noqa: B018 (read and checked)
            done += 1
            if progress is not None:
                progress(done, total)
        shards |= set(data._shards)
        data._shards.clear()  # close them
    return len(shards), total


class MismatchedVideos(torch.utils.data.Dataset):
    """Pairs window i's music with the video of window ``i + len // 2``: a control for evaluation.

    The loss with mismatched videos minus the loss with the true ones is how much
    the adapter uses the video.
    """

    def __init__(self, dataset: PreparedDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Example:
        other = self.dataset[(i + len(self) // 2) % len(self)]
        ex = self.dataset[i]
        return Example(ex.codes, other.features, ex.text)


@dataclass
class Batch:
    """Collated windows: codes [B, K, T], valid [B, T] (False on padding), videos, texts."""

    codes: torch.Tensor
    valid: torch.Tensor
    videos: VideoBatch
    texts: list

    def to(self, device) -> "Batch":
        return Batch(self.codes.to(device), self.valid.to(device), self.videos.to(device), self.texts)


class Collate:
    """Pads windows to the longest and aligns their video to the codec frame rate."""

    def __init__(self, frame_rate: float):
        self.frame_rate = frame_rate

    def __call__(self, examples: list[Example]) -> Batch:
        T = max(ex.codes.shape[-1] for ex in examples)
        K = examples[0].codes.shape[0]
        codes = torch.zeros(len(examples), K, T, dtype=torch.long)
        valid = torch.zeros(len(examples), T, dtype=torch.bool)
        for i, ex in enumerate(examples):
            codes[i, :, :ex.codes.shape[-1]] = ex.codes
            valid[i, :ex.codes.shape[-1]] = True
        videos = VideoBatch.from_features([ex.features for ex in examples], self.frame_rate, num_frames=T)
        return Batch(codes, valid, videos, [ex.text for ex in examples])
