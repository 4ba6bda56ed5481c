"""Visual features of a video: global CLIP embeddings and the local change signal.

- Global: image embeddings of the frames shown at ``k / global_fps`` -> ``[Tg, Dg]``.
- Local: patch tokens of the frames shown at ``k / local_fps``; per patch,
  ``d_t = 1 - cos(p_t, p_{t-1})`` and ``d_0 = 1`` -> ``[Tl, P]``. Cuts and flashes
  change every patch at once; motion changes a few.

Each distinct source frame is decoded and encoded once, whichever grid it serves
(at 25 and 1 fps every global frame is also a local frame). Decoding runs in a
background thread one chunk ahead of encoding (decord and torch both release the
GIL; :mod:`vidmusician.video.prefetch`), and at most a few chunks of frames exist
at a time, so memory does not grow with the video's length.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checks import MAX_COUNT, number
from ..errors import ConfigError, DataError, one_line, short_path
from ..fileio import atomic_write, native_name
from ..progress import progress_bar
from .encoders import DEFAULT_ENCODER, VisualEncoder, encoder_fingerprint, load_encoder
from .prefetch import prefetch
from .reader import FrameReader, probe, sample_times

__all__ = ["VideoFeatures", "VisualEncoder", "load_encoder", "extract_features", "DEFAULT_ENCODER"]

# Bump when the feature computation changes: old cache entries then stop matching.
FEATURES_VERSION = 1
# Rates above a frame per millisecond are typos (1e6 would encode millions of copies
# of each frame); the CLI and the adapter config take the same range.
MAX_FPS = 1000.0


@dataclass
class VideoFeatures:
    """The visual conditioning of one video.

    Checked when made (:meth:`check`): numpy arrays are taken as tensors; anything
    the model would trip over (NaN, a 1-D tensor, a rate of 0) is a one-line DataError.

    Attributes:
        global_feats: ``[Tg, Dg]`` float32 CLIP image embeddings at ``global_fps``.
        local_feats: ``[Tl, P]`` float32 per-patch change signal at ``local_fps``.
        global_fps: Rate of ``global_feats`` (row k is the frame at ``k / global_fps``).
        local_fps: Rate of ``local_feats``.
        duration: Video duration in seconds.
        encoder: Spec of the visual encoder that made them.
        encoder_activation: Its MLP activation, ``"quick_gelu"`` or ``"gelu"``; None
            in files written before it was recorded (then it was what open_clip's
            config for the architecture gives: see
            :func:`vidmusician.video.encoder_specs.legacy_activation`).
    """

    global_feats: torch.Tensor
    local_feats: torch.Tensor
    global_fps: float
    local_fps: float
    duration: float
    encoder: str
    encoder_activation: str | None = None

    def __post_init__(self):
        # numpy arrays (np.load, another pipeline's output) are taken as tensors.
        for name in ("global_feats", "local_feats"):
            if isinstance(getattr(self, name), np.ndarray):
                setattr(self, name, torch.as_tensor(getattr(self, name)))
        self.check()

    def check(self) -> VideoFeatures:
        """Checks what generation and training would trip over deep inside the model.

        Runs when features are made or loaded, and again when they are batched (a
        tensor may have been changed in place since).

        Returns:
            The features themselves.

        Raises:
            DataError: One line naming the field and the fix: a field that is not a 2-D
                float tensor, NaN/inf values, a rate outside ``(0, 1000]``, a duration
                that is not a positive number.
        """
        problem = _problem(self)
        if problem:
            raise DataError(f"video features: {problem}")
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Writes a safetensors file (tensors ``global``, ``local``; the rest as metadata).

        The file appears complete or not at all: it is written under a temporary
        name in the same folder, then renamed.

        Raises:
            DataError: The features are not valid (:meth:`check`), or the file cannot
                be written (a folder, a missing folder, a full disk).
        """
        from safetensors.torch import save

        self.check()
        path = Path(path)
        tensors = {
            "global": self.global_feats.detach().float().cpu().contiguous(),
            "local": self.local_feats.detach().float().cpu().contiguous(),
        }
        metadata = {
            "global_fps": repr(float(self.global_fps)),
            "local_fps": repr(float(self.local_fps)),
            "duration": repr(float(self.duration)),
            "encoder": self.encoder,
            **({"encoder_activation": self.encoder_activation} if self.encoder_activation else {}),
            "format": "vidmusician.video.features",
            "version": str(FEATURES_VERSION),
        }
        # Serialized in memory (features are small) and written with open(), so the
        # file gets the usual umask permissions (safetensors' save_file makes 0600).
        data = save(tensors, metadata=metadata)
        try:
            atomic_write(path, lambda tmp: tmp.write_bytes(data))
        except OSError as exc:  # a folder given, a missing folder, a full disk
            raise DataError(f"video features not saved: {one_line(exc)}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> VideoFeatures:
        """Reads a file written by :meth:`save`.

        Raises:
            DataError: The file is missing, not safetensors, or lacks the tensors or
                metadata of a features file.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such features file")
        try:
            with native_name(path) as name, safe_open(name, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("global", "local") if k in f.keys()}
            fields = (tensors["global"], tensors["local"], float(meta["global_fps"]), float(meta["local_fps"]),
                      float(meta["duration"]), meta["encoder"], meta.get("encoder_activation"))
        except KeyError as exc:
            raise DataError(f"{path}: not a features file (missing {exc.args[0]!r})") from None
        except Exception as exc:  # safetensors raises SafetensorError / OSError on corrupt files
            raise DataError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None
        try:
            return cls(*fields)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None


def _problem(feats: VideoFeatures) -> str | None:
    """What is wrong with ``feats`` (see :meth:`VideoFeatures.check`), or None."""
    for name in ("global_feats", "local_feats"):
        x = getattr(feats, name)
        if not isinstance(x, torch.Tensor):
            return f"{name} must be a tensor or numpy array, got {type(x).__name__}"
        if x.ndim != 2 or not x.is_floating_point():
            return f"{name} must be a 2-D float tensor [frames, width], got {x.dtype} of shape {tuple(x.shape)}"
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            return f"{name} holds NaN/inf values (row {int((~finite).nonzero()[0])}); extract them again"
    for name, high, wanted in (("global_fps", MAX_FPS, f"a rate in (0, {MAX_FPS:g}]"),
                               ("local_fps", MAX_FPS, f"a rate in (0, {MAX_FPS:g}]"),
                               ("duration", math.inf, "a positive number of seconds")):
        value = getattr(feats, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                math.isfinite(value) and 0 < value <= high):
            return f"{name} must be {wanted}, got {value!r}"
    if not isinstance(feats.encoder, str):
        return f"encoder must be the encoder's spec (a string, e.g. 'ViT-B-32:openai'), got {feats.encoder!r}"
    if feats.encoder_activation is not None and not isinstance(feats.encoder_activation, str):
        return f"encoder_activation must be 'quick_gelu', 'gelu' or None, got {feats.encoder_activation!r}"
    return None


def extract_features(
    video: str | os.PathLike,
    encoder: VisualEncoder | str | None = None,
    global_fps: float = 1.0,
    local_fps: float = 25.0,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | bool | None = None,
    progress: bool = False,
    device=None,
) -> VideoFeatures:
    """Computes (or reads from the cache) a video's global and local features.

    Args:
        video: Video file.
        encoder: A loaded :class:`VisualEncoder`, or a spec for :func:`load_encoder`
            (None -> ``ViT-B-32:openai``).
        global_fps: Rate of the global embeddings.
        local_fps: Rate of the local change signal.
        batch_size: Frames per decode chunk and encoder batch.
        cache_dir: Folder of cached features, keyed by the video's content hash,
            the encoder (with its activation) and both rates; ``True`` uses ``~/.cache/vidmusician/features``
            (or ``$XDG_CACHE_HOME/vidmusician/features``); None disables caching.
        progress: Show a progress bar (tqdm) when extraction takes more than a second.
        device: Device for an encoder loaded from a spec; None picks CUDA when
            available.

    Returns:
        The video's :class:`VideoFeatures`.

    Raises:
        VideoError: The video cannot be read.
        ConfigError: The video is not a path, a rate is not in ``(0, 1000]``, the
            batch size is not a positive whole number, or the encoder spec is invalid.
    """
    global_fps, local_fps, batch_size = _check_arguments(video, encoder, global_fps, local_fps, batch_size)
    video = Path(video)
    # Check the video before hashing it or building the encoder: a bad file fails fast.
    probe(video)
    cache_file = None
    if cache_dir is not None and cache_dir is not False:
        cache_file = _cache_path(cache_dir, video, encoder, global_fps, local_fps)
        try:  # a cache folder that cannot be: said before the work
            cache_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{short_path(cache_dir)}: cannot hold the feature cache ({one_line(exc)}); "
                              f"pass a folder") from None
        cached = _read_cache(cache_file)
        if cached is not None:
            return cached
    encoder = load_encoder(encoder, device)
    # Decode at the size open_clip's transform resizes to: the decoder does the resize.
    reader = FrameReader(video, size=encoder.resize_size)
    feats = _compute(reader, encoder, float(global_fps), float(local_fps), int(batch_size), progress)
    if cache_file is not None:
        try:
            feats.save(cache_file)
        except (OSError, DataError) as exc:  # a full disk, say: the features are made, only not kept
            warnings.warn(f"{cache_file.parent}: the features were not cached ({one_line(exc)})", stacklevel=2)
    return feats


def _check_arguments(video, encoder, global_fps, local_fps, batch_size) -> tuple[float, float, int]:
    """:func:`extract_features`' arguments checked before any work: ``(global_fps, local_fps, batch_size)``.

    Raises:
        ConfigError: One line naming the argument and what it takes.
    """
    if not isinstance(video, (str, os.PathLike)):
        raise ConfigError(f"video must be a video file path, got {type(video).__name__}")
    if encoder is not None and not isinstance(encoder, (str, VisualEncoder)):
        raise ConfigError(f"encoder must be a spec such as {DEFAULT_ENCODER!r} or a loaded VisualEncoder "
                          f"(load_encoder), got {type(encoder).__name__}")
    # numpy and torch scalars are numbers too; bools and strings are not.
    rates = [float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value
             for value in (global_fps, local_fps)]
    for name, value in zip(("global_fps", "local_fps"), rates):
        number(name, value, low=0, high=MAX_FPS, low_open=True)
    if isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool):
        batch_size = int(batch_size)
    number("batch_size", batch_size, integer=True, low=1, high=MAX_COUNT)
    return rates[0], rates[1], batch_size


class FeatureBuilder:
    """Assembles one video's :class:`VideoFeatures` from its encoded frames, given in decode order.

    :attr:`frames` lists the distinct source frames to encode, sorted. Encode them
    in consecutive pieces of any sizes (alone or in batches with other videos'
    frames) and hand each piece's results to :meth:`add`, in order.

    Args:
        reader: The video, opened at the encoder's :meth:`~VisualEncoder.resize_size`.
        encoder: The encoder whose results :meth:`add` receives.
        global_fps, local_fps: Rates of the two grids.
    """

    def __init__(self, reader: FrameReader, encoder: VisualEncoder, global_fps: float, local_fps: float):
        self.reader, self.encoder = reader, encoder
        self.global_fps, self.local_fps = float(global_fps), float(local_fps)
        duration = reader.info.duration
        self._idx_g = reader.indices_at(sample_times(duration, global_fps))
        self._idx_l = reader.indices_at(sample_times(duration, local_fps))
        self.frames = np.union1d(self._idx_g, self._idx_l)  # sorted distinct source frames: decode order
        self._global = torch.empty(len(self._idx_g), encoder.global_dim)
        self._local = torch.empty(len(self._idx_l), encoder.num_patches)
        self._prev = None  # unit patch tokens of the previous local sample, across pieces
        self._added = 0

    @property
    def complete(self) -> bool:
        """Whether every frame's results were added."""
        return self._added == len(self.frames)

    def add(self, chunk: np.ndarray, emb: torch.Tensor, tokens: torch.Tensor) -> None:
        """Takes the encoder's results for the next piece of :attr:`frames`.

        Args:
            chunk: The piece: ``frames[k:k + n]`` for the ``k`` frames already added.
            emb, tokens: :meth:`VisualEncoder.embed`'s results for those frames.
        """
        assert np.array_equal(chunk, self.frames[self._added:self._added + len(chunk)]), "pieces out of order"
        idx_g, idx_l = self._idx_g, self._idx_l
        # Both grids are non-decreasing in source index, so each piece serves a
        # contiguous run of rows of each.
        g0 = np.searchsorted(idx_g, chunk[0], side="left")
        g1 = np.searchsorted(idx_g, chunk[-1], side="right")
        if g1 > g0:
            rows = torch.from_numpy(np.searchsorted(chunk, idx_g[g0:g1]))
            self._global[g0:g1] = emb[rows.to(emb.device)].cpu()
        l0 = np.searchsorted(idx_l, chunk[0], side="left")
        l1 = np.searchsorted(idx_l, chunk[-1], side="right")
        if l1 > l0:
            rows = torch.from_numpy(np.searchsorted(chunk, idx_l[l0:l1])).to(tokens.device)
            cur = torch.nn.functional.normalize(tokens[rows], dim=-1)  # [n, P, W] unit tokens
            before = torch.cat([cur[:1] if self._prev is None else self._prev[None], cur[:-1]])
            change = 1.0 - (cur * before).sum(-1)
            if self._prev is None:
                change[0] = 1.0  # d_0 = 1: everything in the first frame is new
            self._local[l0:l1] = change.clamp_(0.0, 2.0).cpu()
            self._prev = cur[-1]
        self._added += len(chunk)

    def result(self) -> VideoFeatures:
        """The video's features, once every frame was added."""
        assert self.complete, f"{self._added} of {len(self.frames)} frames added"
        return VideoFeatures(self._global, self._local, self.global_fps, self.local_fps, self.reader.info.duration,
                             self.encoder.name, self.encoder.activation)


def _compute(
    reader: FrameReader, encoder: VisualEncoder, global_fps: float, local_fps: float, batch_size: int, progress: bool
) -> VideoFeatures:
    builder = FeatureBuilder(reader, encoder, global_fps, local_fps)
    frames = builder.frames
    chunks = [frames[i : i + batch_size] for i in range(0, len(frames), batch_size)]
    bar = progress_bar(total=len(frames), unit="frame", desc=reader.path.name, enabled=progress, delay=1.0)
    with bar:
        for chunk, batch in prefetch(reader, chunks, pin=encoder.device.type == "cuda"):
            builder.add(chunk, *encoder.encode(batch))
            bar.update(len(chunk))
    return builder.result()


def _cache_path(cache_dir, video: Path, encoder, global_fps: float, local_fps: float) -> Path:
    """``<cache_dir>/<key>.safetensors``, key = hash of (content, encoder and its activation, rates, version)."""
    if cache_dir is True:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache_dir = base / "vidmusician" / "features"
    # From a spec, without loading the model: a cache hit never builds the encoder.
    encoder_id = encoder.fingerprint if isinstance(encoder, VisualEncoder) else encoder_fingerprint(encoder)
    key = json.dumps(
        {"video": _content_hash(video), "encoder": encoder_id, "global_fps": float(global_fps),
         "local_fps": float(local_fps), "version": FEATURES_VERSION},
        sort_keys=True,
    )
    return Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"


def _content_hash(path: Path, block: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes: a renamed or copied video still hits the cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            digest.update(data)
    return digest.hexdigest()


def _read_cache(path: Path) -> VideoFeatures | None:
    """The cached features, or None when absent or unreadable (then recomputed and replaced)."""
    if not path.is_file():
        return None
    try:
        return VideoFeatures.load(path)
    except DataError:
        return None
