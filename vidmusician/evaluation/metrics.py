"""Rhythm-alignment metrics on plain arrays, and their means over clips.

Every function here takes event times in seconds, so each metric can be checked
exactly against a value computed by hand. Getting those events out of audio and
video files is the job of :mod:`vidmusician.evaluation.onsets` and
:mod:`vidmusician.evaluation.visual_beats`; the distribution metric (Fréchet
distance of embeddings) is :mod:`vidmusician.evaluation.frechet`'s; running the
metrics over folders of files is :mod:`vidmusician.evaluation.evaluate`'s.

Conventions shared by the functions:

- Event times are seconds from the start of the clip; order and duplicates do
  not matter.
- A ratio whose denominator is empty is ``nan`` (undefined, e.g. a reference
  with no onsets has no rhythm to cover) unless the reference implementation
  the metric reproduces defines it otherwise; each docstring says which.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from .frechet import (Embedder, embedding_stats, frechet_audio_distance, frechet_distance,  # noqa: F401
                      frechet_distance_from_stats, too_few_embeddings)  # (their old home)

# Bailando's beat-alignment score uses sigma = 3 frames (its `BA()` divides the
# squared frame distance by 2 * 9) of its 60 fps AIST++ features: 0.05 s.
BAILANDO_SIGMA_FRAMES = 3.0
BAILANDO_FPS = 60.0


def _as_times(times: Iterable[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(times, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} holds non-finite event times; pass times in seconds")
    if arr.size and arr.min() < 0:
        raise ConfigError(f"{name} holds negative event times ({arr.min():g} s); pass times from the clip start")
    return arr


def onset_bins(times: Iterable[float] | np.ndarray, duration: float | None = None) -> np.ndarray:
    """The 1-second bins that hold at least one event.

    This is the binarisation of D2M-GAN's ``beat_detect`` (Zhu et al., 2022,
    https://github.com/L-YeZhu/Beats_Scores): bin ``k`` is set when an event
    lies in ``[k, k + 1)`` seconds (``int(np.trunc(t))``).

    Args:
        times: Event times in seconds.
        duration: When given, events at or after ``duration`` are dropped, so
            two tracks are compared over the same span.

    Returns:
        Sorted unique bin indices, int64.
    """
    arr = _as_times(times, "times")
    if duration is not None:
        arr = arr[arr < duration]
    return np.unique(np.floor(arr).astype(np.int64))


@dataclasses.dataclass(frozen=True)
class BinCounts:
    """Counts of 1-second bins holding an onset.

    Attributes:
        generated: Bins with a generated onset.
        reference: Bins with a reference onset.
        hits: Bins with an onset in both.
    """

    generated: int
    reference: int
    hits: int


def bin_counts(
    generated: Iterable[float] | np.ndarray,
    reference: Iterable[float] | np.ndarray,
    duration: float | None = None,
) -> BinCounts:
    """Counts the 1-second onset bins of two tracks and their overlap.

    Args:
        generated: Onset times of the generated music, seconds.
        reference: Onset times of the reference music, seconds.
        duration: Common span to compare over (the shorter track's length);
            events after it are ignored. ``None`` keeps every event.

    Returns:
        The :class:`BinCounts`.
    """
    gen = onset_bins(generated, duration)
    ref = onset_bins(reference, duration)
    return BinCounts(int(gen.size), int(ref.size), int(np.intersect1d(gen, ref).size))


def beats_scores(
    generated: Iterable[float] | np.ndarray,
    reference: Iterable[float] | np.ndarray,
    duration: float | None = None,
) -> tuple[float, float]:
    """Beats Coverage Score and Beats Hit Score as defined by D2M-GAN.

    From Zhu et al., "Quantized GAN for Complex Music Generation from Dance
    Videos" (ECCV 2022), reference code ``beats_scores.py`` in
    https://github.com/L-YeZhu/Beats_Scores: onsets are put in 1-second bins
    (see :func:`onset_bins`), then

    - BCS = (bins with a generated onset) / (bins with a reference onset),
    - BHS = (bins with an onset in both) / (bins with a reference onset).

    BCS is not capped at 1: a track with onsets in more bins than the
    reference scores above 1, as in the reference code.

    Args:
        generated: Onset times of the generated music, seconds.
        reference: Onset times of the reference music, seconds.
        duration: Common span to compare over (the reference code requires
            equal lengths; we compare over the shorter one).

    Returns:
        ``(bcs, bhs)``; both ``nan`` when the reference has no onset (the
        reference code divides by zero there).
    """
    c = bin_counts(generated, reference, duration)
    if c.reference == 0:
        return math.nan, math.nan
    return c.generated / c.reference, c.hits / c.reference


@dataclasses.dataclass(frozen=True)
class LorisScores:
    """LORIS's beat scores: precision-, recall- and F1-like bin overlaps.

    Attributes:
        cover: Hits / bins with a generated onset.
        hit: Hits / bins with a reference onset.
        f1: Harmonic mean of ``cover`` and ``hit``.
    """

    cover: float
    hit: float
    f1: float


def f1_score(cover: float, hit: float) -> float:
    """Harmonic mean of two rates; 0 when both are 0, ``nan`` if either is ``nan``."""
    if math.isnan(cover) or math.isnan(hit):
        return math.nan
    if cover + hit == 0:
        return 0.0
    return 2.0 * cover * hit / (cover + hit)


def loris_scores(
    generated: Iterable[float] | np.ndarray,
    reference: Iterable[float] | np.ndarray,
    duration: float | None = None,
) -> LorisScores:
    """Beat cover, hit and F1 as redefined by LORIS.

    From Yu et al., "Long-Term Rhythmic Video Soundtracker" (ICML 2023),
    reference code ``beats_scores.py`` in https://github.com/OpenGVLab/LORIS:
    with the same 1-second bins as :func:`beats_scores`,

    - cover = (bins with an onset in both) / (bins with a generated onset),
    - hit = (bins with an onset in both) / (bins with a reference onset),
    - F1 = 2 * cover * hit / (cover + hit).

    As in the reference code, a rate with an empty denominator is 0 (silence
    scores nothing, rather than being skipped). The reference computes F1
    from the dataset means of cover and hit; :func:`mean_scores` does that
    for a set, and here F1 is the per-clip value.

    Args:
        generated: Onset times of the generated music, seconds.
        reference: Onset times of the reference music, seconds.
        duration: Common span to compare over (the reference code truncates
            the reference to the generated length).

    Returns:
        The :class:`LorisScores`.
    """
    c = bin_counts(generated, reference, duration)
    cover = c.hits / c.generated if c.generated else 0.0
    hit = c.hits / c.reference if c.reference else 0.0
    return LorisScores(cover, hit, f1_score(cover, hit))


def bailando_sigma(fps: float = BAILANDO_FPS, frames: float = BAILANDO_SIGMA_FRAMES) -> float:
    """Bailando's sigma of 3 frames, in seconds at a given frame rate.

    Args:
        fps: Frame rate. Bailando's own is 60 fps (sigma = 0.05 s); at the
            25 fps visual-beat rate 3 frames are 0.12 s.
        frames: Sigma in frames.

    Returns:
        Sigma in seconds.
    """
    if fps <= 0:
        raise ConfigError(f"fps must be positive to express sigma in seconds, got {fps}")
    return frames / fps


# The evaluation's default sigma: Bailando's 3 frames, at the 25 fps grid the
# visual beats are found on rather than Bailando's 60 fps (0.05 s). Both event
# lists are quantized (visual beats to 40 ms frames, music beats to 23 ms
# envelope frames), and at 0.05 s half a video frame of quantization alone
# costs 8% of a perfectly aligned beat's score.
DEFAULT_BA_SIGMA = bailando_sigma(25.0)


def beat_alignment_score(
    music_beats: Iterable[float] | np.ndarray,
    visual_beats: Iterable[float] | np.ndarray,
    sigma: float,
) -> float:
    """Beat alignment score as defined by Bailando.

    From Li et al., "Bailando: 3D Dance Generation by Actor-Critic GPT with
    Choreographic Memory" (CVPR 2022), function ``BA`` in
    ``utils/beat_align_score.py`` of https://github.com/lisiyao21/Bailando::

        BA = 1/|B_m| * sum_{b in B_m} exp(-min_{v in B_v} (b - v)^2 / (2 sigma^2))

    with ``B_m`` the music beats and ``B_v`` the visual (there: kinematic)
    beats. Bailando counts in frames of its 60 fps AIST++ features with
    sigma = 3 frames (0.05 s, ``bailando_sigma()``); here times are seconds,
    and the evaluation's default is :data:`DEFAULT_BA_SIGMA` (0.12 s, 3
    frames of the 25 fps visual-beat grid).

    Args:
        music_beats: Beat times of the music, seconds.
        visual_beats: Visual beat times, seconds.
        sigma: Tolerance in seconds (> 0).

    Returns:
        The score in ``[0, 1]``; ``nan`` without music beats (the mean is
        over them), 0 without visual beats (every beat is unmatched).
    """
    if sigma <= 0:
        raise ConfigError(f"sigma must be positive seconds, got {sigma}")
    music = _as_times(music_beats, "music_beats")
    visual = _as_times(visual_beats, "visual_beats")
    if music.size == 0:
        return math.nan
    if visual.size == 0:
        return 0.0
    d = np.abs(music[:, None] - visual[None, :]).min(axis=1)
    return float(np.mean(np.exp(-(d**2) / (2.0 * sigma**2))))


# --------------------------------------------------------------------------- #
# Aggregation


def nanmean(values: Iterable[float]) -> float:
    """Mean of the defined values; ``nan`` when none is defined."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def mean_scores(rows: Sequence[dict[str, float]], keys: Sequence[str]) -> dict[str, float]:
    """Means over clips of each metric, skipping undefined (``nan``/``None``) values.

    ``loris_f1`` is recomputed from the means of ``loris_cover`` and
    ``loris_hit`` when both are among ``keys``, as the LORIS reference code
    reports it (F1 of the means, not mean of the F1s).

    Args:
        rows: Per-clip metric dicts.
        keys: Metrics to average.

    Returns:
        ``{key: mean}``.
    """
    means = {k: nanmean(r.get(k) for r in rows) for k in keys}
    if {"loris_cover", "loris_hit", "loris_f1"} <= set(keys):
        means["loris_f1"] = f1_score(means["loris_cover"], means["loris_hit"])
    return means
