"""A motion signal for visual beats: mean optical-flow magnitude per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .reader import iter_frames, probe


def flow_signal(video: str | Path, fps: float = 25.0, max_side: int = 128) -> tuple[np.ndarray, float]:
    """Mean optical-flow magnitude per frame, a motion signal for visual beats.

    Flow is dense single-scale Lucas-Kanade (Lucas & Kanade, 1981) between
    consecutive samples, on grayscale frames decoded at most ``max_side``
    pixels on their longer side: a coarse motion energy, not accurate flow,
    which is all peak picking needs (and it needs no OpenCV).

    Args:
        video: Video file.
        fps: Sampling rate of the signal.
        max_side: Longer side of the decoded frames, pixels.

    Returns:
        ``([T] magnitude in pixels of the decoded size per frame, duration in
        seconds)``; frame 0 is 0 (no previous frame).
    """
    info = probe(video)
    scale = min(1.0, max_side / max(info.width, info.height))
    # Even sizes, because the decoder's scaler works on 4:2:0 chroma blocks.
    size = (max(2, int(info.height * scale) // 2 * 2), max(2, int(info.width * scale) // 2 * 2))
    mags, prev = [], None
    for _, frames in iter_frames(video, fps, size=size):
        gray = frames.float().mean(dim=1).numpy() / 255.0  # [n, H, W]
        for frame in gray:
            mags.append(0.0 if prev is None else _lucas_kanade_magnitude(prev, frame))
            prev = frame
    return np.asarray(mags, dtype=np.float64), float(info.duration)


def _lucas_kanade_magnitude(a: np.ndarray, b: np.ndarray, window: float = 2.0) -> float:
    from scipy import ndimage

    a, b = ndimage.gaussian_filter(a, 1.0), ndimage.gaussian_filter(b, 1.0)
    mid = 0.5 * (a + b)
    iy, ix = np.gradient(mid)
    it = b - a
    # Structure tensor and mismatch vector summed over a Gaussian window.
    sxx, sxy, syy = (ndimage.gaussian_filter(v, window) for v in (ix * ix, ix * iy, iy * iy))
    sxt, syt = (ndimage.gaussian_filter(v, window) for v in (ix * it, iy * it))
    det = sxx * syy - sxy * sxy
    # Flat regions (no texture) have no defined flow: leave them at 0 rather
    # than dividing by a vanishing determinant.
    ok = det > 1e-9
    u = np.where(ok, (-syy * sxt + sxy * syt) / np.where(ok, det, 1.0), 0.0)
    v = np.where(ok, (sxy * sxt - sxx * syt) / np.where(ok, det, 1.0), 0.0)
    return float(np.mean(np.hypot(u, v)))
