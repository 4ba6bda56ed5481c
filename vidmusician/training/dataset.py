"""A prepared dataset: what it was made with, its windows for training, and their batches.

The files (index lines and shards) and how they are written: :mod:`vidmusician.training.shards`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..adapter.context import VideoBatch
from ..backbones import missing_folder
from ..errors import DataError, differing_fields, one_line, printable
from ..fileio import atomic_write, native_name
from ..video.encoder_specs import legacy_activation
from ..video.features import VideoFeatures
# The file layout and its writers, importable from here as before they had a module of their own.
from .shards import (ERRORS_NAME, ERRORS_PART, FORMAT_VERSION, INDEX_KEYS, INDEX_NAME, INDEX_PART,  # noqa: F401
                     META_NAME, SHARD_DIR, ShardWriter, append_jsonl, check_prepared, commit_source, complete_rows,
                     dataset_rows, error_rows, file_crc32, has_torn_tail, index_files, read_jsonl, shard_name)


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
    # Which codec made the codes (vidmusician.training.codec_identity), checked by training;
    # None: prepared before it was recorded (then only the shapes above are checked).
    codec_id: str | None = None
    # The fraction of sources held out (prepare's --holdout): a rerun with another would split the
    # sources still to do otherwise than those done. None: prepared before it was recorded.
    holdout: float | None = None

    def save(self, root: Path) -> None:
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        atomic_write(Path(root) / META_NAME, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, root) -> "DatasetMeta":
        path = check_prepared(root)
        try:
            data = json.loads(path.read_text())
            if "encoder_activation" not in data:
                data["encoder_activation"] = legacy_activation(data.get("encoder"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: unreadable dataset description ({exc})") from None

    def backbone_to_load(self, root, given: str | None = None) -> str:
        """The backbone whose codec reads this dataset's codes: ``given`` (``--backbone``), else the recorded one.

        A dataset copied from another machine may record a backbone folder of that machine:
        then the one line says so, rather than the loader's "no such folder" for a name the
        user never gave.

        Raises:
            DataError: the recorded backbone is a folder that is not on this machine, and none is given.
        """
        if given:
            return given
        if missing_folder(self.backbone):
            raise DataError(f"{printable(root)}: prepared with the backbone folder {printable(self.backbone)}, "
                            f"which is not on this machine; pass that MusicGen: --backbone NAME_OR_FOLDER")
        return self.backbone

    def differences(self, other: "DatasetMeta") -> str:
        """Fields that differ (other than the version), in one line ('name: mine vs theirs; ...'; '' when none)."""
        return differing_fields(self, other, [k for k in asdict(self) if k != "format_version"])


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


def check_training_split(train: int, held: int, global_batch: int, data) -> None:
    """Refuses a training split smaller than one global batch, naming the holdout where it took the windows."""
    if train >= global_batch:
        return
    if held and not train:
        raise DataError(f"{printable(data)}: no training window: the holdout (`vidmusician prepare --holdout`) holds "
                        f"all {held}; run the same `vidmusician prepare` again (it moves a video to training), or "
                        f"prepare into a new folder with --holdout 0")
    also = f" (and {held} more in the holdout: prepare into a new folder with --holdout 0 to train on them)" if held else ""
    raise DataError(f"{printable(data)}: the training split has {train} windows, fewer than one global batch "
                    f"({global_batch}); lower batch_size or prepare more data{also}")


class EpochBatches(torch.utils.data.Sampler):
    """This process's part of an endless run of global batches, starting at batch ``start``.

    Epoch e is a permutation seeded by ``(seed, e)``; global batch b is the same
    windows for any process count with the same global batch, and is found from
    b alone, which is what makes resume exact. The last partial batch of an
    epoch is dropped (every process must take the same number of steps).
    """

    def __init__(self, n: int, batch_size: int, num_processes: int, rank: int, seed: int, start: int = 0):
        super().__init__()
        self.n, self.batch_size, self.rank, self.seed, self.start = n, batch_size, rank, seed, start
        self.global_batch = batch_size * num_processes
        self.per_epoch = n // self.global_batch
        if self.per_epoch == 0:
            raise DataError(f"the training split has {n} windows, fewer than one global batch "
                            f"({batch_size} x {num_processes} processes); lower batch_size or prepare more data")

    def __iter__(self):
        b, perm, perm_epoch = self.start, None, None
        while True:
            epoch, i = divmod(b, self.per_epoch)
            if epoch != perm_epoch:
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
                perm_epoch = epoch
            batch = perm[i * self.global_batch:(i + 1) * self.global_batch]
            yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size].tolist()
            b += 1


class TextDropout:
    """Leaves out each training window's text with probability ``p`` (MusicGen's classifier-free dropout).

    A window's draw is a function of the seed, its global batch (counted from the run's
    start, as :class:`EpochBatches` counts them) and its place in that batch, never of
    torch's global RNG: a resumed run draws what the uninterrupted one drew, and any
    process count with the same global batch draws the same for the same window.
    """

    def __init__(self, p: float, batches: EpochBatches):
        self.p, self.seed, self.global_batch = p, batches.seed, batches.global_batch
        self.offset = batches.rank * batches.batch_size  # this process's first place in a global batch

    def __call__(self, texts: list, batch: int) -> list:
        """``texts`` of this process's part of global batch ``batch``, each None where dropped."""
        if not self.p:
            return list(texts)
        # Its own stream (the 1), apart from any other draw made from the same seed.
        u = np.random.default_rng([self.seed, batch, 1]).random(self.global_batch)[self.offset:]
        return [None if drop < self.p else text for text, drop in zip(texts, u.tolist())]


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
