"""Reading music (PyAV), writing generated music as WAV/FLAC (soundfile), checking
output paths, and the tags that say what made the music.

Muxing the music into a copy of the video is :mod:`vidmusician.muxing`, which
builds on this module. Every writer goes through a temporary name in the
destination folder and renames at the end, so a failure (or Ctrl-C) never leaves
a partial file under the requested name. Neither path needs an ffmpeg binary:
soundfile bundles libsndfile and PyAV bundles FFmpeg's libraries.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from .errors import AudioError, ConfigError, one_line, short_path
from .fileio import atomic_write, name_room

__all__ = ["AUDIO_FORMATS", "VIDEO_FORMATS", "read_audio", "check_output_path", "write_audio"]

# Output suffix -> soundfile format / FFmpeg muxer.
AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
VIDEO_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Channels -> PyAV's layout name, for decoding here and for the AAC that muxing encodes.
LAYOUTS = {1: "mono", 2: "stereo"}


def read_audio(path, sample_rate: int, channels: int, align_to_video: bool = False) -> torch.Tensor:
    """Decodes a file's first audio stream with PyAV, resampled: ``[channels, samples]`` float32.

    Args:
        path: audio or video file.
        sample_rate, channels: the codec's.
        align_to_video: time 0 is the first video frame (the audio track of a music
            video may start earlier or later); otherwise the first audio sample.
    """
    import av

    layout = LAYOUTS.get(channels)
    if layout is None:
        raise ConfigError(f"codec channels must be 1 or 2, got {channels}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: has no audio stream (the music of a pair must have one)")
            stream = container.streams.audio[0]
            zero = 0.0
            if align_to_video and container.streams.video:
                v = container.streams.video[0]
                zero = float(v.start_time * v.time_base) if v.start_time is not None else 0.0
            # AAC (and MP3) streams end in a padded frame: decoding yields up to a frame of
            # silence past the music's real end, which an onset detector hears as an event.
            # The stream's duration is the real length (the container's edit list).
            end = None
            if stream.duration is not None and stream.time_base is not None:
                end = float((stream.duration + (stream.start_time or 0)) * stream.time_base)
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
            chunks, first = [], None
            for frame in container.decode(stream):
                if first is None and frame.time is not None:
                    first = frame.time
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except av.FFmpegError as exc:
        raise AudioError(f"{path}: cannot decode the audio ({one_line(exc)})") from None
    if not chunks:
        raise AudioError(f"{path}: the audio stream has no samples")
    wav = torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32))
    if end is not None and first is not None:
        wav = wav[:, : max(1, int(round((end - first) * sample_rate)))]
    shift = int(round(((first or 0.0) - zero) * sample_rate))
    if shift > 0:  # audio starts after time 0: silence before it
        wav = torch.nn.functional.pad(wav, (shift, 0))
    elif shift < 0:
        wav = wav[:, -shift:]
    return wav


def check_output_path(path, inputs=()) -> str:
    """Checks an output path before any work is done; returns 'audio' or 'video'.

    Args:
        path: the output file.
        inputs: files the command reads: the output must not replace one of them.

    Raises:
        ConfigError: unknown extension, missing or read-only folder, a name too long
            for the file system, the path is a folder, or the path is an input.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in AUDIO_FORMATS:
        kind = "audio"
    elif suffix in VIDEO_FORMATS:
        kind = "video"
    else:
        known = ", ".join(sorted(AUDIO_FORMATS) + sorted(VIDEO_FORMATS))
        raise ConfigError(f"{path}: unknown output extension {suffix or '(none)'!r}; use one of {known}")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{path}: folder {parent} does not exist; create it first")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a file name ending in {suffix}")
    check_writable(path)
    for source in inputs:
        if source is not None and same_file(path, source):
            raise ConfigError(f"{path}: is the input {source}; writing it would replace the input, "
                              f"give another output name (e.g. {path.stem}_scored{suffix})")
    return kind


def check_writable(path) -> None:
    """Refuses, before any work, a file that cannot be created: read-only folder, name too long."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    room = name_room(parent)  # the atomic writer's temporary name is longer
    size = len(os.fsencode(path.name))  # the bytes on disk (a name may not be UTF-8)
    if size > room:
        raise ConfigError(f"{short_path(path)}: the file name is too long for this file system "
                          f"({size} bytes, at most {room}); use a shorter name")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{path}: folder {parent} is not writable (read-only or no permission); "
                          f"choose another output folder")


def same_file(a, b) -> bool:
    """Whether two paths name one existing file (hard links and symlinks included)."""
    a, b = Path(a), Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_audio(path, wav: torch.Tensor, sample_rate: int, tags: dict | None = None) -> Path:
    """Writes ``[channels, samples]`` float audio as 16-bit WAV or FLAC (by suffix), ``tags`` in its comment."""
    import soundfile as sf

    path = Path(path)
    fmt = AUDIO_FORMATS.get(path.suffix.lower())
    if fmt is None:
        check_output_path(path)  # raises with the list of formats
    data = as_float_array(wav).T  # soundfile wants [samples, channels]
    if data.shape[0] == 0:
        raise AudioError(no_samples(path))
    # Encoded in memory, then written by Python: a full disk is then an OSError that says
    # so (libsndfile reports only "System error"), and the earlier file stays untouched.
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", sample_rate, data.shape[1], "PCM_16", format=fmt) as f:
        if tags:
            f.comment = tag_text(tags)
        f.write(data)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return path


TAG_PREFIX = "vidmusician "


def tag_text(tags: dict) -> str:
    """The comment an output stores ``tags`` in (an audio file's, or a video container's)."""
    return TAG_PREFIX + json.dumps(tags, sort_keys=True)


def read_tags(path) -> dict:
    """The tags :func:`~vidmusician.muxing.write_output` stored in a file; ``{}`` for any other file."""
    text = None
    try:
        if Path(path).suffix.lower() in AUDIO_FORMATS:
            import soundfile as sf

            with sf.SoundFile(str(path)) as f:
                text = f.comment
        else:
            import av

            with av.open(str(path)) as container:  # Matroska names the tag COMMENT
                text = {k.lower(): v for k, v in container.metadata.items()}.get("comment")
    except Exception:  # unreadable or untagged: the caller falls back to its default
        return {}
    if not text or not text.startswith(TAG_PREFIX):
        return {}
    try:
        tags = json.loads(text[len(TAG_PREFIX):])
    except json.JSONDecodeError:
        return {}
    return tags if isinstance(tags, dict) else {}


def no_samples(path) -> str:
    """The one line for music with no samples, which no writer writes."""
    # An empty WAV, or a video without its music, would pass for a finished output.
    return f"{path}: the music has no samples (a duration under one audio sample); ask for a longer duration"


def as_float_array(wav) -> np.ndarray:
    """``[channels, samples]`` float32, clipped to [-1, 1] (what 16-bit PCM and AAC can hold)."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise ConfigError(f"expected audio of shape [channels, samples], got {tuple(wav.shape)}")
    return np.clip(wav, -1.0, 1.0)
