"""Rhythmic events of music: onsets and beats.

Onsets by librosa's spectral-flux detector with D2M-GAN's settings (the ones its
BCS/BHS were published with) and beats by librosa's dynamic-programming tracker,
on audio decoded as dataset preparation decodes it. The metrics on the resulting
event times are in :mod:`vidmusician.evaluation.metrics`; the video's side is
:mod:`vidmusician.evaluation.visual_beats`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..audio_io import read_audio
from ..errors import AudioError, ConfigError


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
