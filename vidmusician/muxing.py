"""Muxing generated music into a copy of the video (PyAV), and :func:`write_output`, which
writes the music alone or muxed by the output's suffix.

The video stream (and with ``keep_soundtrack`` the source's own audio streams) is
copied unchanged and the music is encoded as AAC; :func:`check_muxable` refuses,
before any work, a video whose streams the output's container cannot hold. The
output goes through a temporary name in the destination folder and is renamed at
the end, as every writer of :mod:`vidmusician.audio_io` does; PyAV bundles FFmpeg's
libraries, so no ffmpeg binary is needed.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .audio_io import LAYOUTS, VIDEO_FORMATS, as_float_array, check_output_path, no_samples, tag_text, write_audio
from .errors import AudioError, ConfigError, VideoError, one_line
from .fileio import atomic_write
from .generation.limits import MIN_DURATION

__all__ = ["check_muxable", "write_output", "mux_audio", "muxed_samples"]

# AAC at this rate is transparent for MusicGen's 32 kHz output.
AAC_BIT_RATE = 192_000


def check_muxable(video, path, keep_soundtrack: bool = False, format_option: str | None = None) -> None:
    """Refuses, before any work, a video whose streams a video output ``path`` cannot hold.

    The output copies the video stream (and with ``keep_soundtrack`` the audio
    streams) unchanged, and each container holds only some codecs: VP8 or VP9 from a
    .webm has no place in .mp4 or .mov. The check is the writer's own first steps, on
    an empty container in memory. An audio output, or a video that cannot be read
    (its probe says why), passes.

    Args:
        format_option: the option the user chose the output's format with (``"--format"``):
            the fix then names it (``use --format mkv``); None: the output's suffix was
            the choice (``use a .mkv output``).

    Raises:
        VideoError: a stream's codec has no place in the output container; the
            message names the video, the codec, the container and the outputs that fit.
    """
    import av

    if Path(path).suffix.lower() not in VIDEO_FORMATS:
        return
    try:
        src = av.open(str(video))
    except (av.FFmpegError, OSError, ValueError):
        return
    with src:
        streams = list(src.streams.video[:1]) + (list(src.streams.audio) if keep_soundtrack else [])
        _check_holds(video, streams, path, format_option)
        _check_copies(video, src, streams, path, format_option)


def _check_holds(video, streams, path, format_option: str | None = None) -> None:
    """VideoError unless the output ``path``'s container takes a copy of each of ``streams``."""
    fmt = VIDEO_FORMATS[Path(path).suffix.lower()]
    for stream in streams:
        if not _holds(fmt, stream):
            raise VideoError(_no_place(video, stream, path, format_option))


def _check_copies(video, src, streams, path, format_option: str | None = None) -> None:
    """VideoError unless the first packet of each of ``streams`` goes into the output ``path``'s
    container in memory: some streams pass the header and fail at their packets (PCM into .mp4)."""
    import av

    fmt = VIDEO_FORMATS[Path(path).suffix.lower()]
    try:
        with av.open(io.BytesIO(), mode="w", format=fmt) as dst:
            outputs = {stream.index: _copy_of(dst, stream) for stream in streams}
            waiting = set(outputs)
            for packet in src.demux(*streams):
                if packet.dts is None or packet.stream.index not in waiting:
                    continue
                waiting.discard(packet.stream.index)
                packet.stream = outputs[packet.stream.index]
                dst.mux(packet)
                if not waiting:
                    break
    except (av.FFmpegError, ValueError) as exc:
        raise VideoError(_no_copy(video, streams, path, exc, format_option)) from None


def _no_copy(video, streams, path, exc, format_option: str | None = None) -> str:
    """The one line for streams of ``video`` that the output ``path``'s container refuses at their packets."""
    copied, fix = (" and audio streams", " or leave out --keep-soundtrack") if len(streams) > 1 else (" stream", "")
    return (f"{video}: cannot copy its {streams[0].codec_context.name} video{copied} into a {Path(path).suffix} "
            f"file ({one_line(exc)}); try {_outputs(['.mkv'], format_option)}{fix}")


def _copy_of(dst, stream):
    """A stream of ``dst`` that takes ``stream``'s packets unchanged.

    ``opaque``: the codec parameters are copied as they are. Without it PyAV looks up
    an encoder named after the stream's decoder, and a decoder-only name (AV1's
    ``libdav1d``) has none, although nothing is encoded.
    """
    return dst.add_stream_from_template(stream, opaque=True)


def _holds(fmt: str, stream) -> bool:
    """Whether a ``fmt`` container takes a copy of ``stream`` (what :func:`mux_audio` adds)."""
    import av

    try:
        with av.open(io.BytesIO(), mode="w", format=fmt) as dst:
            _copy_of(dst, stream)
            # Adding the stream checks FFmpeg's list of the format's codecs; some formats
            # list a codec their header writer then refuses (VP8 in .mov): write the header too.
            dst.start_encoding()
    except (ValueError, av.FFmpegError):
        return False
    return True


def _no_place(video, stream, path, format_option: str | None = None) -> str:
    """The one line for a ``stream`` of ``video`` that the output ``path``'s container cannot hold."""
    suffix = Path(path).suffix.lower()
    fits = [s for s, fmt in VIDEO_FORMATS.items() if s != suffix and _holds(fmt, stream)]
    if stream.type == "video":
        fix = f"use {_outputs(fits, format_option)}" if fits else "write the music alone (.wav or .flac)"
    else:  # a kept soundtrack
        fix = "leave out --keep-soundtrack" + (f", or use {_outputs(fits, format_option)}" if fits else "")
    codec = stream.codec_context.name if stream.codec_context is not None else "unknown"
    return f"{video}: a {suffix} file cannot hold its {codec} {stream.type} stream (copied unchanged); {fix}"


def _outputs(suffixes, format_option: str | None) -> str:
    """The outputs a fix offers, as the user asks for them: ``a .mov or .mkv output``, or with the
    option that chose the format (see :func:`check_muxable`) ``--format mov or --format mkv``."""
    if format_option:
        return " or ".join(f"{format_option} {s[1:]}" for s in suffixes)
    return f"a {' or '.join(suffixes)} output"


def write_output(path, wav: torch.Tensor, sample_rate: int, video=None, tags: dict | None = None,
                 keep_soundtrack: bool = False, format_option: str | None = None) -> Path:
    """Writes ``wav`` to ``path``: an audio file, or ``video`` with the music as its soundtrack.

    Args:
        path: ``.wav``/``.flac`` for audio, ``.mp4``/``.mov``/``.mkv`` for a video.
        wav: ``[channels, samples]`` float audio in [-1, 1].
        sample_rate: sample rate of ``wav``.
        video: the source video; required for a video output.
        tags: what made the music (e.g. the visual encoder), stored in the file's
            comment as JSON; :func:`~vidmusician.audio_io.read_tags` reads it back.
        keep_soundtrack: a video output keeps the video's own audio streams after the
            music (see :func:`mux_audio`).
        format_option: how the user chose the output's format, for the fix an error
            offers (see :func:`check_muxable`).

    Raises:
        ConfigError: an output path no writer takes. AudioError: ``wav`` has no
        samples (nothing is written). VideoError: see :func:`mux_audio`.
    """
    if check_output_path(path) == "audio":
        if keep_soundtrack:
            raise ConfigError(f"{path}: an audio file has no room for the video's own soundtrack; "
                              f"keep it in a video output (.mp4, .mov, .mkv)")
        return write_audio(path, wav, sample_rate, tags)
    if video is None:
        raise ConfigError(f"{path}: a video output needs the source video")
    return mux_audio(video, wav, sample_rate, path, tags, keep_soundtrack=keep_soundtrack, format_option=format_option)


def mux_audio(video, wav: torch.Tensor, sample_rate: int, path, tags: dict | None = None,
              keep_soundtrack: bool = False, format_option: str | None = None) -> Path:
    """Writes ``video``'s video stream (copied, not re-encoded) with ``wav`` as AAC audio.

    The music is the first audio stream, marked default (the one players play). The
    source's own audio streams are dropped, or with ``keep_soundtrack`` copied after
    it unchanged (not re-encoded, their full length; players offer them as other
    tracks). Music longer than the video is cut at the video's end, so the music is
    as long as the video. ``tags`` go into the container's comment (see :func:`~vidmusician.audio_io.read_tags`).
    ``format_option``: how the user chose the output's format (see :func:`check_muxable`).

    Raises:
        VideoError: the source cannot be read, or its codec cannot go into the
            output container (e.g. VP8 into .mp4: write .mkv instead).
        AudioError: ``wav`` has no samples.
    """
    import av

    path = Path(path)
    fmt = VIDEO_FORMATS.get(path.suffix.lower())
    if fmt is None:
        check_output_path(path)
    audio = as_float_array(wav)
    if audio.shape[0] not in LAYOUTS:
        raise ConfigError(f"{path}: can mux mono or stereo music, got {audio.shape[0]} channels")

    def write(tmp):
        try:
            src = av.open(str(video))
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"{video}: cannot read it as a video ({one_line(exc)})") from None
        with src:
            if not src.streams.video:
                raise VideoError(f"{video}: no video stream to copy")
            vin = src.streams.video[0]
            start = float(vin.start_time * vin.time_base) if vin.start_time is not None else 0.0
            music = audio[:, : _kept_samples(_stream_seconds(src, vin), audio.shape[1], sample_rate)]
            if music.shape[1] == 0:
                raise (AudioError(no_samples(path)) if audio.shape[1] == 0 else
                       VideoError(f"{video}: the video stream has no length to put music under"))
            kept = list(src.streams.audio) if keep_soundtrack else []
            # check_muxable's check, for a caller that skipped it
            _check_holds(video, [vin, *kept], path, format_option)
            try:
                with av.open(str(tmp), mode="w", format=fmt) as dst:
                    if tags:
                        dst.metadata["comment"] = tag_text(tags)
                    outputs = {vin.index: _copy_of(dst, vin)}
                    aout = dst.add_stream("aac", rate=sample_rate, layout=LAYOUTS[audio.shape[0]])
                    aout.bit_rate = AAC_BIT_RATE
                    aout.disposition = av.stream.Disposition.default
                    for ain in kept:
                        outputs[ain.index] = _copy_of(dst, ain)
                        outputs[ain.index].disposition = 0  # the music plays by default, not this one
                    # The music starts with the first video frame, wherever the container puts it.
                    audio_packets = _encode_aac(aout, music, sample_rate, first_sample=int(round(start * sample_rate)))
                    _interleave(dst, src.demux(vin, *kept), outputs, audio_packets)
            except (av.FFmpegError, ValueError) as exc:  # PyAV says ValueError for a codec a format refuses
                raise VideoError(_no_copy(video, [vin, *kept], path, exc, format_option)) from None

    atomic_write(path, write)
    return path


def muxed_samples(video, samples: int, sample_rate: int) -> int:
    """How many of ``samples`` music samples a video output of ``video`` holds: the
    music is cut at the video's end (see :func:`mux_audio`)."""
    return _kept_samples(_video_seconds(video), samples, sample_rate)


def muxed_duration(video, duration: float) -> float:
    """The seconds of ``duration`` seconds of music that a video output of ``video`` holds: cut
    at the video's end (:func:`muxed_samples`), so that generation need not sample the rest;
    all of them where the video's length is unknown, and no less than generation's shortest
    (a video of one frame holds less: the output cuts it)."""
    seconds = _video_seconds(video)
    return duration if seconds is None or seconds <= 0 else min(duration, max(seconds, MIN_DURATION))


def _video_seconds(video) -> float | None:
    """The length of ``video``'s video stream, where the container tells it."""
    import av

    try:
        with av.open(str(video)) as src:
            return _stream_seconds(src, src.streams.video[0])
    except (av.FFmpegError, OSError, IndexError):
        return None


def _kept_samples(video_seconds: float | None, samples: int, sample_rate: int) -> int:
    if video_seconds is None:
        return samples
    return min(samples, int(round(video_seconds * sample_rate)))


def _encode_aac(stream, audio: np.ndarray, sample_rate: int, first_sample: int = 0) -> list:
    """Encodes the whole track; returns its packets (about 1.4 MB per minute)."""
    import av

    layout = LAYOUTS[audio.shape[0]]
    packets = []
    step = sample_rate  # one-second frames; the encoder re-buffers to its own frame size
    for start in range(0, audio.shape[1], step):
        chunk = np.ascontiguousarray(audio[:, start:start + step])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = first_sample + start
        frame.time_base = Fraction(1, sample_rate)
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode(None))
    return packets


def _interleave(dst, source_packets, outputs: dict, audio_packets: list) -> None:
    """Muxes the source's packets as they come (to ``outputs[their stream's index]``),
    each preceded by the music's packets due before it."""
    pending = iter(audio_packets)
    next_audio = next(pending, None)
    for packet in source_packets:
        if packet.dts is None:  # the demuxer's flush packet
            continue
        t = _packet_time(packet)
        while next_audio is not None and _packet_time(next_audio) <= t:
            dst.mux(next_audio)
            next_audio = next(pending, None)
        packet.stream = outputs[packet.stream.index]
        dst.mux(packet)
    while next_audio is not None:
        dst.mux(next_audio)
        next_audio = next(pending, None)


def _packet_time(packet) -> float:
    return float((packet.dts if packet.dts is not None else packet.pts or 0) * packet.time_base)


def _stream_seconds(container, stream) -> float | None:
    """The video stream's length in seconds, from the container's metadata."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None
