"""Fréchet distance between embedding sets: FAD with the embedding model left to the caller.

Plain arrays in, a number out, each step checkable by hand: :func:`embedding_stats`
fits a Gaussian to a set, :func:`frechet_distance_from_stats` compares two, and
:func:`frechet_audio_distance` embeds two sets of waveforms with an :class:`Embedder`
(:mod:`vidmusician.evaluation.embedders` has CLAP and VGGish) and compares the pools.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["Embedder", "embedding_stats", "frechet_distance_from_stats", "frechet_distance",
           "frechet_audio_distance", "too_few_embeddings"]


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
