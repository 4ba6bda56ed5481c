"""Dataset preparation: (video, music) pairs -> cached codec codes and visual features.

For each source: decode the music with PyAV (resampled to the codec's rate and
channels), compute the video's features once, cut aligned windows, encode every
window with the frozen compression model once, and write shards (see
:mod:`vidmusician.dataset` for the layout). Bad sources are skipped and listed in
``errors.jsonl``; a rerun skips every source already done (or already failed).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .dataset import (ERRORS_NAME, INDEX_KEYS, INDEX_NAME, META_NAME, DatasetMeta, ShardWriter, append_jsonl,
                      complete_rows, has_torn_tail, read_jsonl)
from .encoders import DEFAULT_ENCODER
from .errors import ConfigError, DataError, VidMusicianError
from .audio_io import read_audio
from .video import VIDEO_SUFFIXES, probe
from .features import VideoFeatures
from .fileio import atomic_write

# Windows start on whole seconds of the global feature grid, so a window's first
# global token is a real frame; clips shorter than this are skipped.
MIN_SECONDS = 1.0


@dataclass
class Source:
    """One training pair: a video, its music (None: the video's own audio track), optional text."""

    id: str
    video: Path
    audio: Path | None = None
    text: str | None = None


@dataclass
class PrepareReport:
    """What a :func:`prepare` run did."""

    sources: int = 0
    already_done: int = 0
    prepared: int = 0
    failed: list = field(default_factory=list)
    windows: int = 0


def list_sources(src) -> list[Source]:
    """The pairs in a folder of music videos (recursive) or in a CSV/JSONL with ``video[,audio][,text]``.

    Paths in a CSV/JSONL are relative to its folder.
    """
    src = Path(src)
    if src.is_dir():
        videos = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise ConfigError(f"{src}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
        return [Source(str(p.relative_to(src)), p) for p in videos]
    if not src.is_file():
        raise ConfigError(f"{src}: no such folder or file; pass a folder of music videos or a CSV/JSONL of pairs")
    if src.suffix.lower() == ".csv":
        with open(src, newline="") as f:
            rows = list(csv.DictReader(f))
    elif src.suffix.lower() in (".jsonl", ".json"):
        try:
            rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{src}: invalid JSON on line {exc.lineno}") from None
    else:
        raise ConfigError(f"{src}: expected a folder, a .csv or a .jsonl file")
    sources = []
    for n, row in enumerate(rows, start=2 if src.suffix.lower() == ".csv" else 1):
        if not row.get("video"):
            raise ConfigError(f"{src}: row {n} has no 'video' (columns: video, audio (optional), text (optional))")
        audio = row.get("audio") or None
        sid = row["video"] if audio is None else f"{row['video']}+{audio}"
        sources.append(Source(sid, src.parent / row["video"], src.parent / audio if audio else None,
                              row.get("text") or None))
    return sources


def window_starts(duration: float, window: float, hop: float, grid: float) -> tuple[list[float], float]:
    """Window starts (on ``grid``) and length covering a clip: every ``hop``, plus one ending at the end.

    A clip shorter than ``window`` gives one window of its own length.
    """
    if duration < window:
        return [0.0], duration
    last = math.floor((duration - window) / grid + 1e-6) * grid
    starts = [float(s) for s in np.arange(0.0, last + 1e-6, hop)]
    if last - starts[-1] > 1e-6:
        starts.append(last)
    return starts, window


def slice_features(feats: VideoFeatures, start: float, length: float) -> VideoFeatures:
    """The features of ``[start, start + length)`` of a video, timed from the window's start."""
    def rows(x: torch.Tensor, fps: float) -> torch.Tensor:
        first = int(round(start * fps))
        return x[first:first + max(1, math.ceil(length * fps - 1e-6))]

    return VideoFeatures(rows(feats.global_feats, feats.global_fps), rows(feats.local_feats, feats.local_fps),
                         feats.global_fps, feats.local_fps, length, feats.encoder)


def encode_windows(cm, wav: torch.Tensor, starts: list[float], length: float, batch: int = 8) -> torch.Tensor:
    """Codes of each window: ``[N, K, T]`` with ``T = length * frame_rate``, encoded ``batch`` windows at a time."""
    sr, T = cm.sample_rate, int(round(length * cm.frame_rate))
    n = int(round(length * sr))
    device = next(cm.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(starts), batch):
            segments = [wav[:, int(round(s * sr)):int(round(s * sr)) + n] for s in starts[i:i + batch]]
            x = torch.stack([torch.nn.functional.pad(seg, (0, n - seg.shape[-1])) for seg in segments])
            codes, scale = cm.encode(x.to(device))
            if scale is not None:
                raise DataError("the codec renormalizes its input (scale); such codecs are not supported")
            out.append(codes[..., :T].cpu())
    return torch.cat(out)


def process_source(source: Source, cm, encoder, meta: DatasetMeta) -> list[tuple[float, torch.Tensor, VideoFeatures]]:
    """All windows of one source: ``(start, codes [K, T], window features)``."""
    from .features import extract_features

    probe(source.video)  # a file that is not a video fails here, with the clearest message
    wav = read_audio(source.audio or source.video, meta.sample_rate, meta.channels,
                     align_to_video=source.audio is None)
    feats = extract_features(source.video, encoder, meta.global_fps, meta.local_fps)
    duration = min(feats.duration, wav.shape[-1] / meta.sample_rate)
    duration = math.floor(duration * meta.frame_rate + 1e-6) / meta.frame_rate  # whole codec frames
    if duration < MIN_SECONDS:
        raise DataError(f"{source.video}: only {duration:.2f} s of video with music (at least {MIN_SECONDS:g} s needed)")
    starts, length = window_starts(duration, meta.window, meta.hop, grid=1.0 / meta.global_fps)
    codes = encode_windows(cm, wav, starts, length)
    return [(s, c, slice_features(feats, s, length)) for s, c in zip(starts, codes)]


def holdout_ids(ids: list[str], fraction: float) -> set[str]:
    """A fixed fraction of sources, chosen by hash (stable across reruns; at least one when asked)."""
    if fraction <= 0 or len(ids) < 2:
        return set()
    n = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return set(sorted(ids, key=lambda s: hashlib.sha1(s.encode()).hexdigest())[:n])


def prepare(src, out, backbone: str = "facebook/musicgen-small", encoder: str = DEFAULT_ENCODER,
            window: float = 30.0, hop: float = 30.0, holdout: float = 0.05, global_fps: float = 1.0,
            local_fps: float = 25.0, retry_errors: bool = False, shard_windows: int = 256,
            device=None, progress: bool = True) -> PrepareReport:
    """Prepares a training dataset in ``out`` (see the module docstring).

    Args:
        src: a folder of music videos, or a CSV/JSONL of ``video, audio, text`` pairs.
        out: dataset folder; a rerun continues where the last run stopped.
        backbone: MusicGen whose codec encodes the music (a name for ``load_codec``: hub
            name, local folder, 'tiny', 'random-SIZE').
        encoder: visual encoder spec for :func:`vidmusician.features.load_encoder`.
        window, hop: window length and step in seconds.
        holdout: fraction of sources held out for evaluation.
        global_fps, local_fps: rates of the visual features.
        retry_errors: try again the sources listed in ``errors.jsonl``.
        shard_windows: windows per shard file.
        device: where the codec and encoder run (default: CUDA when available).
        progress: show a progress bar.
    """
    from tqdm.auto import tqdm

    if not (window > 0 and hop > 0 and 0 <= holdout < 1):
        raise ConfigError(f"need window > 0, hop > 0 and 0 <= holdout < 1 (got {window}, {hop}, {holdout})")
    if abs(hop * global_fps - round(hop * global_fps)) > 1e-6:
        raise ConfigError(f"--hop {hop} must be a whole number of global frames (1/{global_fps:g} s)")
    out = Path(out)
    sources = list_sources(src)
    out.mkdir(parents=True, exist_ok=True)
    asked = dict(backbone=backbone, encoder=encoder, window=float(window), hop=float(hop),
                 global_fps=float(global_fps), local_fps=float(local_fps))
    if (out / META_NAME).is_file():
        old = DatasetMeta.load(out)
        diffs = [f"{k}: {getattr(old, k)} vs {v}" for k, v in asked.items() if getattr(old, k) != v]
        if diffs:
            raise DataError(f"{out}: prepared with other settings ({'; '.join(diffs)}); use a new folder")

    rows = read_jsonl(out / INDEX_NAME, INDEX_KEYS)
    done = complete_rows(rows)
    if len(done) != len(rows) or has_torn_tail(out / INDEX_NAME):  # killed mid-append: keep whole sources only
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in done)
        atomic_write(out / INDEX_NAME, lambda tmp: Path(tmp).write_text(text))
    errors = read_jsonl(out / ERRORS_NAME)
    if retry_errors and errors:
        (out / ERRORS_NAME).unlink()
        errors = []
    finished = {r["source"] for r in done} | {e["source"] for e in errors}
    held = holdout_ids([s.id for s in sources], holdout)
    pending = [s for s in sources if s.id not in finished]
    report = PrepareReport(sources=len(sources), already_done=len(sources) - len(pending))
    if not pending:
        return report

    from .backbones import load_codec
    from .features import load_encoder

    cm = load_codec(backbone, device=device)  # the codec alone: the LM is not needed to encode
    enc = load_encoder(encoder, device=device)
    meta = DatasetMeta(backbone=backbone, sample_rate=int(cm.sample_rate), channels=int(cm.channels),
                       frame_rate=float(cm.frame_rate), n_q=int(cm.num_codebooks), card=int(cm.cardinality),
                       encoder=encoder, global_dim=int(enc.global_dim), local_dim=int(enc.num_patches),
                       global_fps=float(global_fps), local_fps=float(local_fps), window=float(window), hop=float(hop),
                       encoder_activation=enc.activation)
    if (out / META_NAME).is_file() and DatasetMeta.load(out).differences(meta):
        raise DataError(f"{out}: prepared with another codec or encoder "
                        f"({'; '.join(DatasetMeta.load(out).differences(meta))}); use a new folder")
    meta.save(out)

    writer = ShardWriter(out, shard_windows)
    bar = tqdm(pending, unit="video", desc="prepare", disable=not progress)
    try:
        for source in bar:
            try:
                windows = process_source(source, cm, enc, meta)
            except VidMusicianError as exc:
                report.failed.append({"source": source.id, "error": str(exc)})
                append_jsonl(out / ERRORS_NAME, [report.failed[-1]])
                continue
            split = "holdout" if source.id in held else "train"
            writer.add({"source": source.id, "split": split, "text": source.text}, windows)
            report.prepared += 1
            report.windows += len(windows)
            bar.set_postfix(windows=report.windows, errors=len(report.failed))
    finally:
        writer.flush()  # what is complete is kept, even on Ctrl-C
    return report
