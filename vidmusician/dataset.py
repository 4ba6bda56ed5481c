"""A prepared dataset on disk: cached codec codes and visual features of fixed windows.

Layout of a dataset folder (written by :mod:`vidmusician.prepare`)::

    dataset.json        what made it: backbone codec, visual encoder, window, fps
    index.jsonl         one line per window: source, start, length, shard, split, text
    shards/NNNNNN.safetensors
                        per window ``<key>.codes`` [K, T] int16, ``<key>.global``
                        [Tg, Dg] and ``<key>.local`` [Tl, P] float16
    errors.jsonl        sources that could not be used, with the reason

A shard is written under a temporary name and renamed; its index lines are
appended after the rename, so every index line points at a complete shard. A
source is done when all its windows are in the index (each line says how many
its source has); a torn last line or a partly indexed source is redone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .fileio import atomic_write
from .context import VideoBatch
from .encoder_specs import legacy_activation
from .errors import DataError
from .features import VideoFeatures

META_NAME = "dataset.json"
INDEX_NAME = "index.jsonl"
ERRORS_NAME = "errors.jsonl"
SHARD_DIR = "shards"
FORMAT_VERSION = 1


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

    def differences(self, other: "DatasetMeta") -> list[str]:
        """Fields that differ (other than the version), as 'name: mine vs theirs'."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: {mine[k]} vs {theirs[k]}" for k in mine if k != "format_version" and mine[k] != theirs[k]]


def read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSONL file; a torn last line (a kill mid-append) is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Appends rows in one write and syncs, so a kill leaves at most one torn line."""
    if not rows:
        return
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    with open(path, "a") as f:
        if f.tell() and not _ends_with_newline(path):
            text = "\n" + text  # after a torn line: start a fresh one
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


class ShardWriter:
    """Collects windows and writes them as safetensors shards plus index lines.

    Windows of one source go into the same shard, and a source's index lines are
    written together after its shard is complete.
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
            self._tensors[f"{key}.codes"] = codes.to(torch.int16).cpu().contiguous()
            self._tensors[f"{key}.global"] = feats.global_feats.to(torch.float16).cpu().contiguous()
            self._tensors[f"{key}.local"] = feats.local_feats.to(torch.float16).cpu().contiguous()
            self._rows.append(dict(source, shard=name, key=key, window=i, windows=len(windows),
                                   start=round(start, 6), seconds=round(feats.duration, 6),
                                   frames=int(codes.shape[-1])))
        if len(self._rows) >= self.shard_windows:
            self.flush()

    def flush(self) -> None:
        """Writes the pending shard, then its index lines."""
        from safetensors.torch import save_file

        if not self._rows:
            return
        path = self.root / SHARD_DIR / self._rows[0]["shard"]
        tensors = self._tensors
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "vidmusician.dataset"}))
        append_jsonl(self.root / INDEX_NAME, self._rows)
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
        rows = complete_rows(read_jsonl(self.root / INDEX_NAME))
        self.rows = [r for r in rows if r["split"] == split]
        self.split = split
        self.has_text = any(r.get("text") for r in self.rows)
        self._shards: dict[str, object] = {}  # opened lazily, per DataLoader worker

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        row = self.rows[i]
        shard = self._open(row["shard"])
        key, m = row["key"], self.meta
        feats = VideoFeatures(shard.get_tensor(f"{key}.global").float(), shard.get_tensor(f"{key}.local").float(),
                              m.global_fps, m.local_fps, float(row["seconds"]), m.encoder, m.encoder_activation)
        return Example(shard.get_tensor(f"{key}.codes").long(), feats, row.get("text"))

    def _open(self, name: str):
        from safetensors import SafetensorError, safe_open

        if name not in self._shards:
            path = self.root / SHARD_DIR / name
            try:
                self._shards[name] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as exc:
                raise DataError(f"{path}: unreadable shard ({exc}); delete it and its index lines, "
                                f"then rerun `vidmusician prepare`") from None
        return self._shards[name]


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
