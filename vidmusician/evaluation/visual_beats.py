"""Rhythmic events of video: a per-frame change signal and the visual beats on it.

The signal is the per-frame change of :func:`vidmusician.video.features.extract_features`
(mean over patches of the local features) or the mean optical-flow magnitude; visual
beats are the frames whose change stands out from the clip's own (a threshold on the
prominence over a moving median, in robust standard deviations of the clip, with a
floor in the signal's units), so a clip without events has none. The music's side is
:mod:`vidmusician.evaluation.onsets`; the metrics are in :mod:`vidmusician.evaluation.metrics`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..video.features import extract_features
from ..video.optical_flow import flow_signal


@dataclasses.dataclass(frozen=True)
class VisualBeatConfig:
    """Peak picking of visual beats on a per-frame change signal.

    A visual beat is a frame whose change stands out from the clip's own
    ongoing change: its prominence (the signal minus a moving median, the
    baseline that steady motion such as a pan or a drifting object sets) must
    exceed ``threshold = max(spread * sigma, floor)``, with ``sigma`` the
    robust standard deviation (1.4826 x the median absolute deviation) of the
    prominence over the whole clip. ``spread`` makes the threshold relative
    to the clip's own fluctuations; ``floor``, in the signal's units, keeps a
    nearly static clip (whose fluctuations are codec noise, sigma ~ 0) from
    having beats at all. So a static, slowly panning or steadily moving clip
    has none, and a cut or a flash is one.

    Windows are in seconds so the same settings hold at any frame rate; each
    is rounded to whole frames (at least 1).

    Attributes:
        pre_max: Seconds before a peak it must be the maximum of.
        post_max: Seconds after a peak it must be the maximum of. 0 (one
            frame, exclusive) makes the earliest frame of a change the beat:
            a one-frame flash changes the signal on the frame it appears and
            the frame it goes, and the beat is when it appears.
        wait: Seconds to skip after a beat.
        baseline: Length of the moving-median window, seconds.
        spread: Prominence needed, in robust standard deviations of the
            clip's prominence.
        floor: Prominence always needed, in the signal's units.

    Why these values: ``wait`` of 0.1 s merges a flash's two changes (on and
    off, one frame apart) into one beat and caps visual beats at 10 per
    second, faster than any musical beat; ``pre_max`` of 0.12 s is 3 frames at
    25 fps; a 1 s median ignores events up to a few per second (they are a
    minority of its frames) yet follows a change of pace; 5 sigma leaves
    Gaussian noise about one false beat per 10^6 frames. The floors are in
    :data:`VISUAL_BEAT_PRESETS`.
    """

    pre_max: float = 0.12
    post_max: float = 0.0
    wait: float = 0.1
    baseline: float = 1.0
    spread: float = 5.0
    floor: float = 0.02

    def __post_init__(self):
        for name in ("pre_max", "post_max", "wait", "baseline", "spread", "floor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"visual beat setting {name}={value!r} must be a finite number >= 0")

    def frames(self, fps: float) -> dict[str, int]:
        """The windows in whole frames (at least 1) at a frame rate."""
        return {n: max(int(round(getattr(self, n) * fps)), 1) for n in ("pre_max", "post_max", "wait", "baseline")}


# Floors per signal. "change" (1 - cosine of CLIP patch tokens, mean over
# patches) is in [0, 2]: 0.02 is above what codec noise and a small object's
# step give, while a hard cut replaces most patches' content. "flow" is the
# mean flow magnitude in pixels of frames at most 128 px: 0.25 px is above a
# small object's 1-pixel step averaged over the frame (~0.1 px).
VISUAL_BEAT_PRESETS = {"change": VisualBeatConfig(floor=0.02), "flow": VisualBeatConfig(floor=0.25)}


@dataclasses.dataclass
class VisualRhythm:
    """A per-frame visual change signal and the visual beats picked on it.

    Attributes:
        duration: Video length in seconds.
        signal: ``[T]`` change per frame, in the source's units.
        fps: Frames per second of ``signal``.
        beats: Visual beat times, seconds.
        source: ``"change"`` (CLIP patch change) or ``"flow"`` (optical flow).
        baseline: ``[T]`` moving median of ``signal``.
        threshold: Prominence over ``baseline`` a beat needed.
    """

    duration: float
    signal: np.ndarray
    fps: float
    beats: np.ndarray
    source: str
    baseline: np.ndarray | None = None
    threshold: float = 0.0

    @property
    def times(self) -> np.ndarray:
        return np.arange(len(self.signal)) / self.fps


def change_signal(local_feats: np.ndarray) -> np.ndarray:
    """Per-frame scalar change: the mean over patches of the local features.

    Args:
        local_feats: ``[T, P]`` per-patch change ``d_t = 1 - cos(p_t, p_{t-1})``.

    Returns:
        ``[T]`` float64; frame 0 is 0, because ``d_0 = 1`` only marks the
        start of the clip (there is no previous frame), not a visual event.
    """
    feats = np.asarray(local_feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ConfigError(f"local features must be [T, P], got shape {feats.shape}")
    signal = feats.mean(axis=1)
    if signal.size:
        signal[0] = 0.0
    return signal


def beat_threshold(
    signal: np.ndarray, fps: float, config: VisualBeatConfig = VisualBeatConfig()
) -> tuple[np.ndarray, float]:
    """The baseline of a change signal and the prominence a visual beat needs.

    Args:
        signal: ``[T]`` change per frame, in its own units.
        fps: Frame rate of ``signal``.
        config: Settings (see :class:`VisualBeatConfig`).

    Returns:
        ``(baseline [T], threshold)``: a frame can be a beat when
        ``signal - baseline >= threshold``.
    """
    from scipy import ndimage

    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return x, config.floor
    # Odd, so the median is centered on the frame.
    size = config.frames(fps)["baseline"] // 2 * 2 + 1
    baseline = ndimage.median_filter(x, size=size, mode="nearest")
    prominence = x - baseline
    sigma = 1.4826 * np.median(np.abs(prominence - np.median(prominence)))
    return baseline, float(max(config.spread * sigma, config.floor))


def pick_visual_beats(signal: np.ndarray, fps: float, config: VisualBeatConfig = VisualBeatConfig()) -> np.ndarray:
    """Visual beats: frames whose change stands out from the clip's own (see :class:`VisualBeatConfig`).

    Args:
        signal: ``[T]`` change per frame, in its own units (not normalized:
            the floor is in those units).
        fps: Frame rate of ``signal``.
        config: Peak-picking settings.

    Returns:
        Beat times in seconds (frame index / fps).
    """
    return _pick(signal, fps, config)[2]


def _pick(signal: np.ndarray, fps: float, config: VisualBeatConfig) -> tuple[np.ndarray, float, np.ndarray]:
    """``(baseline, threshold, beat times)`` of a signal."""
    baseline, threshold = beat_threshold(signal, fps, config)
    prominence = np.asarray(signal, np.float64).reshape(-1) - baseline
    frames = config.frames(fps)
    if prominence.size == 0:
        return baseline, threshold, np.zeros(0)
    pre, post = frames["pre_max"], frames["post_max"]
    # Window of frame n: prominence[n - pre : n + post] (post exclusive), as in librosa.util.peak_pick.
    padded = np.pad(prominence, (pre, post - 1), constant_values=-np.inf)
    local_max = np.lib.stride_tricks.sliding_window_view(padded, pre + post).max(axis=1)
    candidates = np.flatnonzero((prominence >= local_max) & (prominence >= threshold) & (prominence > 0))
    beats, last = [], -np.inf
    for n in candidates:
        if n > last + frames["wait"]:
            beats.append(n)
            last = n
    return baseline, threshold, np.asarray(beats, dtype=np.float64) / fps


def visual_rhythm(
    video: str | Path,
    encoder: Any = None,
    fps: float = 25.0,
    source: str = "change",
    config: VisualBeatConfig | None = None,
    cache_dir: str | Path | bool | None = None,
) -> VisualRhythm:
    """The visual change signal of a video and its visual beats.

    Args:
        video: Video file.
        encoder: For ``source="change"``: what
            :func:`vidmusician.video.features.extract_features` takes (a spec such as
            ``"tiny"``, a loaded encoder, or ``None`` for the default).
        fps: Frame rate of the signal (the local feature rate).
        source: ``"change"``: mean CLIP patch change (the signal the rhythmic
            adapter sees); ``"flow"``: mean optical-flow magnitude.
        config: Peak-picking settings; ``None``: the source's
            :data:`VISUAL_BEAT_PRESETS`.
        cache_dir: Feature cache for ``source="change"``, as in
            :func:`~vidmusician.video.features.extract_features`.

    Returns:
        The :class:`VisualRhythm`.
    """
    if source == "change":
        feats = extract_features(video, encoder=encoder, local_fps=fps, cache_dir=cache_dir)
        signal, rate, duration = change_signal(feats.local_feats), float(feats.local_fps), float(feats.duration)
    elif source == "flow":
        signal, duration = flow_signal(video, fps=fps)
        rate = fps
    else:
        raise ConfigError(f"unknown visual beat source {source!r}; use 'change' or 'flow'")
    config = VISUAL_BEAT_PRESETS[source] if config is None else config
    baseline, threshold, beats = _pick(signal, rate, config)
    return VisualRhythm(duration, signal.astype(np.float32), rate, beats, source, baseline.astype(np.float32), threshold)
