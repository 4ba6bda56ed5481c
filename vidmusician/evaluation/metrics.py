"""Rhythm-alignment and distribution metrics on plain arrays.

Every function here takes event times in seconds (or embedding matrices), so
each metric can be checked exactly against a value computed by hand. Getting
those events out of audio and video files is the job of :mod:`vidmusician.evaluation.onsets`
and :mod:`vidmusician.evaluation.visual_beats`;
running the metrics over folders of files is :mod:`vidmusician.evaluation.evaluate`'s.

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
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np

from ..errors import ConfigError

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
# Fréchet distance between embedding sets


class Embedder(Protocol):
    """Maps a mono waveform to a set of embeddings (one row per frame or clip).

    Any callable with this signature plugs into :func:`frechet_audio_distance`
    and ``vidmusician eval --embedder module:name``;
    :mod:`vidmusician.evaluation.embedders` has CLAP and VGGish.
    """

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray: ...


def embedding_stats(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a set of embeddings.

    Args:
        embeddings: ``[N, D]`` with ``N >= 2``.

    Returns:
        ``(mu [D], sigma [D, D])``, float64.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"need an [N, D] embedding matrix with N >= 2 to estimate a covariance, got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between two Gaussians.

    The squared 2-Wasserstein distance of N(mu1, sigma1) and N(mu2, sigma2)
    (Dowson & Landau, 1982), as used by FID (Heusel et al., 2017) and FAD
    (Kilgour et al., 2019)::

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})

    Args:
        mu1: Mean of the first set, ``[D]``.
        sigma1: Covariance of the first set, ``[D, D]``.
        mu2: Mean of the second set, ``[D]``.
        sigma2: Covariance of the second set, ``[D, D]``.
        eps: Diagonal offset used only when the product is singular, as in
            the reference FID code (pytorch-fid).

    Returns:
        The distance ``d^2`` (>= 0, up to round-off).
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ConfigError(
            f"embedding statistics differ in size: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}; "
            "embed both sets with the same embedder"
        )
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.all(np.isfinite(covmean)):
        # A singular product (fewer samples than dimensions) has no finite
        # square root; a small ridge makes it well defined.
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    # The square root of a product of PSD matrices is real in theory; round-off
    # leaves tiny imaginary parts, which are dropped.
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance(embeddings1: np.ndarray, embeddings2: np.ndarray) -> float:
    """Fréchet distance between two embedding sets (see :func:`frechet_distance_from_stats`).

    Args:
        embeddings1: ``[N1, D]``.
        embeddings2: ``[N2, D]``.

    Returns:
        The distance between the Gaussians fitted to each set.
    """
    return frechet_distance_from_stats(*embedding_stats(embeddings1), *embedding_stats(embeddings2))


def frechet_audio_distance(
    generated: Sequence[np.ndarray], reference: Sequence[np.ndarray], sample_rate: int, embedder: Embedder
) -> float:
    """Fréchet distance of two sets of waveforms under a user-supplied embedder.

    Each waveform is embedded, the rows of all clips of a set are pooled, and
    the Fréchet distance of the two pools is returned (the FAD recipe of
    Kilgour et al., 2019, with the embedding model left to the caller).

    Args:
        generated: Mono waveforms of the generated music.
        reference: Mono waveforms of the reference music.
        sample_rate: Sample rate of every waveform.
        embedder: Maps ``(audio, sample_rate)`` to ``[n, D]`` embeddings.

    Returns:
        The distance.
    """

    def pool(waves: Sequence[np.ndarray]) -> np.ndarray:
        rows = [np.atleast_2d(np.asarray(embedder(np.asarray(w, np.float32), sample_rate), np.float64)) for w in waves]
        return np.concatenate(rows, axis=0) if rows else np.zeros((0, 0))

    pools = {"generated": pool(generated), "reference": pool(reference)}
    short = too_few_embeddings({role: rows.shape[0] for role, rows in pools.items()})
    if short:
        raise ConfigError(short)
    return frechet_distance(pools["generated"], pools["reference"])


def too_few_embeddings(counts: Mapping[str, int]) -> str | None:
    """One line naming each set of ``counts`` (``{"generated": n, ...}``) with fewer than the 2 embeddings
    a covariance needs, and the fix; None when every set has enough."""
    short = [f"the {role} music gives {n} embedding{'s' if n != 1 else ''}" for role, n in counts.items() if n < 2]
    if not short:
        return None
    return (f"{' and '.join(short)}, and a Fréchet distance needs at least 2 per set to estimate a covariance; "
            f"evaluate more clips or longer ones")


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
