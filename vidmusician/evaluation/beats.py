"""Rhythmic events from files: music onsets and beats, visual beats.

Music: onsets by librosa's spectral-flux detector with D2M-GAN's settings (the
ones its BCS/BHS were published with) and beats by librosa's dynamic-
programming tracker. Video: the per-frame change signal of
:func:`vidmusician.video.features.extract_features` (mean over patches of the local
features) or the mean optical-flow magnitude, and visual beats: the frames whose
change stands out from the clip's own (a threshold on the prominence over a
moving median, in robust standard deviations of the clip, with a floor in the
signal's units), so a clip without events has none. The metrics on the resulting event times are in
:mod:`vidmusician.evaluation.metrics`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..audio_io import read_audio
from ..errors import AudioError, ConfigError
from ..video.features import extract_features
from ..video.optical_flow import flow_signal


# --------------------------------------------------------------------------- #
# Audio


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Reads an audio file, or the audio track of a video, as mono float32.

    Decoding is the one dataset preparation uses (PyAV, downmixed and resampled
    by FFmpeg, time 0 at the first video frame for a video), so the metrics
    see music on the same timeline as training does.

    Args:
        path: Audio file, or a video with an audio stream.
        sample_rate: Rate to resample to.

    Returns:
        ``[S]`` float32.

    Raises:
        AudioError: The file is missing, unreadable, or has no audio stream.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file; check the path")
    return np.ascontiguousarray(read_audio(path, sample_rate, channels=1, align_to_video=True)[0].numpy())


@dataclasses.dataclass(frozen=True)
class OnsetConfig:
    """Settings of music onset detection (librosa's ``onset_strength`` and ``onset_detect``).

    The defaults are D2M-GAN's (``beat_detect`` in
    https://github.com/L-YeZhu/Beats_Scores): audio at 22.05 kHz, hop 512,
    peak picking with ``pre_max=1, post_max=1, pre_avg=1, post_avg=1,
    delta=0.2, wait=1`` frames on the normalized onset envelope (its call
    leaves ``pre_max`` at librosa's default, ``0.03 * sr // hop = 1``). LORIS
    (``beat_detect`` in https://github.com/OpenGVLab/LORIS) uses 3-frame
    windows instead (``pre_max=post_max=pre_avg=post_avg=3``).

    Both ran librosa 0.8, whose STFT padded the signal by reflection; librosa
    0.10 changed the default to zeros (``"constant"``), which makes music
    that is already loud at its first sample rise out of silence, an onset in
    the first 0.1 s that the reference implementations do not find. So
    ``pad_mode`` is the reference's ``"reflect"``.

    Attributes:
        sample_rate: Rate the audio is analysed at, Hz.
        hop_length: Samples between onset-envelope frames.
        pad_mode: How the STFT pads the signal's ends (``numpy.pad`` mode).
        pre_max: Frames before a peak it must be the maximum of.
        post_max: Frames after (exclusive) a peak it must be the maximum of.
        pre_avg: Frames before a peak in the local mean.
        post_avg: Frames after a peak in the local mean.
        delta: Margin over the local mean, in units of the normalized envelope.
        wait: Frames to skip after a peak.
    """

    sample_rate: int = 22050
    hop_length: int = 512
    pad_mode: str = "reflect"
    pre_max: int = 1
    post_max: int = 1
    pre_avg: int = 1
    post_avg: int = 1
    delta: float = 0.2
    wait: int = 1

    def peak_kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("pre_max", "post_max", "pre_avg", "post_avg", "delta", "wait")}

    def envelope_key(self) -> tuple[int, int, str]:
        """What the onset envelope depends on (the rest is peak picking)."""
        return self.sample_rate, self.hop_length, self.pad_mode


# Onset settings of the two reference implementations of the bin scores.
ONSET_PRESETS = {
    "d2m": OnsetConfig(),
    "loris": OnsetConfig(pre_max=3, post_max=3, pre_avg=3, post_avg=3),
}


@dataclasses.dataclass
class MusicRhythm:
    """Onsets, beats and the onset envelope of a piece of music.

    Attributes:
        duration: Length in seconds.
        envelope: ``[F]`` onset strength, normalized to [0, 1].
        envelope_fps: Frames per second of ``envelope`` (``sample_rate / hop``).
        onsets: Onset times, seconds.
        beats: Beat times, seconds.
        other_onsets: Onset times picked on the same envelope with other
            settings, by name (e.g. ``{"loris": ...}``).
    """

    duration: float
    envelope: np.ndarray
    envelope_fps: float
    onsets: np.ndarray
    beats: np.ndarray
    other_onsets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def envelope_times(self) -> np.ndarray:
        return np.arange(len(self.envelope)) / self.envelope_fps


def music_rhythm(
    audio: np.ndarray | str | Path,
    config: OnsetConfig = OnsetConfig(),
    others: Mapping[str, OnsetConfig] | None = None,
) -> MusicRhythm:
    """Onsets and beats of a piece of music.

    Args:
        audio: A file (see :func:`load_audio`) or a mono waveform already at
            ``config.sample_rate``.
        config: Detection settings.
        others: More onset settings, by name, whose onsets go to
            ``other_onsets``; they must share ``config``'s envelope settings
            (rate, hop, padding), so the envelope is computed once.

    Returns:
        The :class:`MusicRhythm`.

    Raises:
        ConfigError: A setting in ``others`` needs a different envelope.
    """
    import librosa

    others = dict(others or {})
    for name, other in others.items():
        if other.envelope_key() != config.envelope_key():
            raise ConfigError(
                f"onset settings {name!r} need another envelope (rate, hop, padding {other.envelope_key()} "
                f"vs {config.envelope_key()}); analyse the music once per envelope"
            )
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio, config.sample_rate)
    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    sr, hop = config.sample_rate, config.hop_length
    env = librosa.onset.onset_strength(y=y, sr=sr, hop_length=hop, pad_mode=config.pad_mode)
    # onset_detect normalizes the envelope the same way before peak picking, so
    # the stored envelope is the one the onsets were picked on.
    env = env - env.min()
    if env.max() > 0:
        env = env / env.max()

    def pick(cfg: OnsetConfig) -> np.ndarray:
        times = librosa.onset.onset_detect(
            onset_envelope=env, sr=sr, hop_length=hop, units="time", normalize=False, **cfg.peak_kwargs()
        )
        return np.asarray(times, dtype=np.float64)

    if env.max() > 0:
        _, beats = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=hop, units="time")
    else:  # silence: beat_track would warn and return nothing anyway
        beats = np.zeros(0)
    return MusicRhythm(
        duration=len(y) / sr,
        envelope=env.astype(np.float32),
        envelope_fps=sr / hop,
        onsets=pick(config),
        beats=np.asarray(beats, dtype=np.float64),
        other_onsets={name: pick(other) for name, other in others.items()},
    )


# --------------------------------------------------------------------------- #
# Video


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
