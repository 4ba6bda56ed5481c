"""Checking a video's container with PyAV before its frames are decoded.

:func:`check_container` runs first when a video is opened: PyAV reports problems as
Python exceptions, so a missing, empty, truncated or non-video file is refused
here in one line naming the file, and the frame reader opens decord only on a
file that passed (decord reports failures as C++ check messages on stderr). It
also gives what decord does not: the displayed size after the stream's rotation,
whether the file has audio, and the video stream's duration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import VideoError, one_line

__all__ = ["check_container"]

# Demuxers that read one still picture (FFmpeg's image2 family); a GIF is a video.
_IMAGE_FORMATS = {"image2", "image2pipe", "apng"}


def check_container(path: Path) -> tuple[int, int, bool, float | None]:
    """Checks the container with PyAV; returns (displayed width, height, has_audio, video duration).

    Args:
        path: Video file.

    Returns:
        ``(width, height, has_audio, duration)``: the frame size as displayed (after the
        stream's rotation), whether the file has an audio stream, and the video stream's
        duration in seconds (None when the container stores none).

    Raises:
        VideoError: The file is missing, a directory, empty, not a video (text, audio
            only, a still image), undecodable or truncated.
    """
    import av

    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir():
        raise VideoError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: is empty (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = one_line(exc)
        raise VideoError(f"{path}: not a readable video file (truncated, corrupt or not a video: {reason})") from None
    with container:
        fmt = container.format.name
        streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        has_audio = len(container.streams.audio) > 0
        if fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
            raise VideoError(f"{path}: is a still image ({fmt}), not a video")
        if not streams:
            what = "an audio-only file" if has_audio else "no audio or video"
            raise VideoError(f"{path}: has no video stream ({what})")
        stream = streams[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if not (width and height):
            raise VideoError(f"{path}: the video stream has no frame size (unsupported or corrupt codec data)")
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        rotation = _check_frames(container, stream, path)
    if rotation % 180:
        # decord turns such frames upright (as players do): report the size shown.
        width, height = height, width
    return width, height, has_audio, duration


def _check_frames(container, stream, path: Path) -> int:
    """Decodes the first frame and checks the last packets hold data; returns the rotation.

    Decoding one frame proves the codec is readable and gives the display
    rotation (phone videos store landscape frames plus "show rotated 90 degrees").
    """
    import av

    try:
        first = next(iter(container.decode(stream)), None)
    except av.FFmpegError as exc:
        _check_tail(container, stream, path)  # a truncated file is the likelier story; say so
        codec = stream.codec_context.name
        raise VideoError(f"{path}: cannot decode its {codec} video ({one_line(exc)})") from None
    if first is None:
        raise VideoError(f"{path}: the video stream has no frames")
    _check_tail(container, stream, path)
    return int(round(getattr(first, "rotation", 0) or 0))


def _check_tail(container, stream, path: Path) -> None:
    """Raises unless the packets near the end of the stream hold data.

    A file cut short (a partial download) can keep a complete index at its start
    (mp4 "faststart") while the frames it points to are gone; reading the packets
    near the end catches that without decoding the whole file.
    """
    import av

    if not stream.duration:  # e.g. Matroska: no index to compare with
        return
    try:
        end = (stream.start_time or 0) + stream.duration
        container.seek(end, stream=stream, backward=True, any_frame=False)
        packets = [p for p in container.demux(stream) if p.size > 0]
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: is truncated or corrupt ({one_line(exc)})") from None
    # The last frame starts within one frame period (plus rounding) of the end.
    last = max((p.pts + (p.duration or 0) for p in packets if p.pts is not None), default=None)
    period = _frame_period(stream, packets)
    if last is None or (end - last) * stream.time_base > 2 * period:
        raise VideoError(f"{path}: is truncated (the frames near the end are missing)")
    # An AVI cut short loses its index (at the end): FFmpeg then measures the stream from
    # the frames present, while the header keeps the length written (in time-base units).
    written = stream.frames if container.format.name == "avi" else 0
    if written and (written - stream.duration) * stream.time_base > 2 * period:
        raise VideoError(f"{path}: is truncated (the frames near the end are missing)")


def _frame_period(stream, packets) -> float:
    """Seconds from one frame to the next near the stream's end.

    The gaps between the packets read there are the real period. The stream's rates
    can be another clock: an AVI's ``average_rate`` is its time base's (1000 for a
    25 fps file with a 1/1000 time base). The median ignores a gap a missing frame left.
    """
    times = sorted({p.pts for p in packets if p.pts is not None})
    gaps = np.diff(times)
    if len(gaps):
        return float(np.median(gaps) * stream.time_base)
    return 1.0 / float(stream.guessed_rate or stream.base_rate or stream.average_rate or 25)
