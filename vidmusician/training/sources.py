"""The sources of a dataset and their windows: listing (video, music) pairs, cutting
aligned windows, encoding their music, and choosing the holdout.

A source's id is its path relative to the folder (or the CSV/JSONL's ``video`` and
``audio``), as :func:`~vidmusician.errors.printable` writes it: a name whose bytes are
not UTF-8 (which the file system allows) has those bytes as ``\\xNN``, so the index,
``errors.jsonl``, the holdout choice and the shard names, all made from ids, are
valid UTF-8 and the same on every rerun.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio_io import read_audio
from ..errors import ConfigError, DataError, printable
from ..video.features import VideoFeatures
from ..video.reader import VIDEO_SUFFIXES, frames_covering, whole_frames
from .dataset import DatasetMeta

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


def list_sources(src) -> list[Source]:
    """The pairs in a folder of music videos (recursive) or in a CSV/JSONL with ``video[,audio][,text]``.

    Paths in a CSV/JSONL are relative to its folder.
    """
    src = Path(src)
    if src.is_dir():
        videos = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise ConfigError(f"{src}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
        sources = [Source(printable(p.relative_to(src)), p) for p in videos]
        ids = {}
        for s in sources:  # two ids the same only where one name spells another's undecodable bytes
            if ids.setdefault(s.id, s.video) != s.video:
                raise ConfigError(f"{printable(ids[s.id])} and {printable(s.video)}: both are named {s.id} in the "
                                  f"dataset; rename one")
        return sources
    if not src.is_file():
        raise ConfigError(f"{src}: no such folder or file; pass a folder of music videos or a CSV/JSONL of pairs")
    if src.suffix.lower() == ".csv":
        # surrogateescape: names in any encoding come through as the file system's bytes; utf-8-sig: a
        # byte-order mark (spreadsheets' "CSV UTF-8") is not part of the first column's name.
        with open(src, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            rows = list(csv.DictReader(f))
    elif src.suffix.lower() in (".jsonl", ".json"):
        try:
            rows = [json.loads(line) for line in src.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
                    if line.strip()]
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{src}: invalid JSON on line {exc.lineno}") from None
    else:
        raise ConfigError(f"{src}: expected a folder, a .csv or a .jsonl file")
    sources, first_row = [], {}
    for n, row in enumerate(rows, start=2 if src.suffix.lower() == ".csv" else 1):
        if not row.get("video"):
            raise ConfigError(f"{src}: row {n} has no 'video' (columns: video, audio (optional), text (optional))")
        audio = row.get("audio") or None
        sid = printable(row["video"] if audio is None else f"{row['video']}+{audio}")
        # One file is one source in the index and the shards: a second row would write its windows again,
        # also where it spells the path another way (./a.mp4, a.mp4, sub/../a.mp4).
        key = tuple(os.path.normpath(src.parent / p) for p in (row["video"], audio) if p)
        if first_row.setdefault(key, (n, sid))[0] != n:
            first, first_id = first_row[key]
            named = sid if first_id == sid else f"{first_id} and {sid}"
            raise ConfigError(f"{src}: rows {first} and {n} both name {named}; list each video (with its "
                              f"audio) once (one text per pair)")
        sources.append(Source(sid, src.parent / row["video"], src.parent / audio if audio else None,
                              printable(row.get("text") or "") or None))
    return sources


def window_starts(duration: float, window: float, hop: float, grid: float) -> tuple[list[float], float]:
    """Window starts (on ``grid``) and length covering a clip: every ``hop``, plus one ending at the end.

    A clip shorter than ``window`` gives one window of its own length.
    """
    if duration < window:
        return [0.0], duration
    last = whole_frames(duration - window, 1.0 / grid) * grid
    starts = [float(s) for s in np.arange(0.0, last + 1e-6, hop)]
    if last - starts[-1] > 1e-6:
        starts.append(last)
    return starts, window


def slice_features(feats: VideoFeatures, start: float, length: float) -> VideoFeatures:
    """The features of ``[start, start + length)`` of a video, timed from the window's start."""
    def rows(x: torch.Tensor, fps: float) -> torch.Tensor:
        first = int(round(start * fps))
        return x[first:first + frames_covering(length, fps)]

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


def load_audio(source: Source, meta: DatasetMeta) -> torch.Tensor:
    """The music of a source at the codec's rate and channels."""
    return read_audio(source.audio or source.video, meta.sample_rate, meta.channels,
                      align_to_video=source.audio is None)


def process_source(source: Source, cm, meta: DatasetMeta, feats: VideoFeatures, wav: torch.Tensor,
                   seconds: dict | None = None) -> list[tuple[float, torch.Tensor, VideoFeatures]]:
    """All windows of one source: ``(start, codes [K, T], window features)``.

    Args:
        feats: the source's visual features.
        wav: its music (:func:`load_audio`).
        seconds: adds the codec's time ("codec") to this dict.
    """
    seconds = {} if seconds is None else seconds
    duration = min(feats.duration, wav.shape[-1] / meta.sample_rate)
    duration = whole_frames(duration, meta.frame_rate) / meta.frame_rate
    if duration < MIN_SECONDS:
        raise DataError(f"{source.video}: only {duration:.2f} s of video with music (at least {MIN_SECONDS:g} s needed)")
    starts, length = window_starts(duration, meta.window, meta.hop, grid=1.0 / meta.global_fps)
    t = time.perf_counter()
    codes = encode_windows(cm, wav, starts, length)
    seconds["codec"] = seconds.get("codec", 0.0) + time.perf_counter() - t
    return [(s, c, slice_features(feats, s, length)) for s, c in zip(starts, codes)]


def holdout_order(source_id: str) -> str:
    """The order in which the holdout takes sources: by hash, so stable across reruns and process counts."""
    return hashlib.sha1(source_id.encode()).hexdigest()


def holdout_ids(ids: list[str], fraction: float) -> set[str]:
    """A fixed fraction of sources, chosen by hash (stable across reruns; at least one when asked, never all)."""
    if fraction <= 0 or len(ids) < 2:
        return set()
    n = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return set(sorted(ids, key=holdout_order)[:n])
