"""Reading videos: probing, frame-accurate sampling at timestamps, chunked iteration.

Frames are decoded with decord, resized inside the decoder when a size is asked
for (FFmpeg's scaler, so a 4K video never exists at full size in Python). The
container is first checked with PyAV (:mod:`.container`), which reports problems
as Python exceptions; decord is only opened on a file PyAV accepted, because decord
reports failures as C++ check messages on stderr.

Time is measured from the first video frame: the frame "shown at time t" is the
last frame whose presentation time is <= t. Indices come from each frame's own
timestamp, so variable-frame-rate videos are sampled correctly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, VideoError, one_line
from ..fileio import native_name
from .container import check_container

__all__ = ["VideoInfo", "FrameReader", "probe", "read_frames", "iter_frames", "sample_times", "frames_covering",
           "whole_frames"]

# File suffixes read as videos when a folder is scanned (prepare, eval).
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")
# Slack when matching a requested time to frame timestamps: containers store
# rounded timestamps (e.g. 0.04 s as 0.0399...), far finer than any frame period.
_TIME_EPS = 1e-4
# Slack when counting frames in a duration: seconds times a rate carries float noise
# (1.1 * 50 = 55.00000000000001, 0.29 * 100 = 28.999999999999996) that must not add
# or drop a frame; it is far below one frame of any rate (the finest is 1/50 s).
FRAME_TOLERANCE = 1e-6

Size = tuple[int, int]


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video.

    Attributes:
        path: The file, as given.
        duration: Seconds from the first frame's start to the last frame's end.
        fps: Average frame rate (frames per second).
        num_frames: Number of decodable video frames.
        width: Frame width in pixels, as displayed (after the stream's rotation).
        height: Frame height in pixels, as displayed.
        has_audio: Whether the file has an audio stream.
    """

    path: str
    duration: float
    fps: float
    num_frames: int
    width: int
    height: int
    has_audio: bool


def probe(path: str | os.PathLike) -> VideoInfo:
    """Checks that a file is a readable video and describes it.

    Args:
        path: Video file.

    Returns:
        The video's :class:`VideoInfo`.

    Raises:
        VideoError: The file is missing, a directory, empty, not a video (text,
            audio only, a still image), truncated, or has no frames. The message is
            one line naming the file and the problem.
    """
    return FrameReader(path).info


def read_frames(
    path: str | os.PathLike, times: Sequence[float] | np.ndarray, size: Size | None = None
) -> torch.Tensor:
    """Decodes the frames shown at the given times.

    Args:
        path: Video file.
        times: Seconds from the first frame, in any order; times before 0 give the
            first frame and times past the end give the last.
        size: ``(height, width)`` to decode at, or None for the stored size.

    Returns:
        ``[N, 3, H, W]`` uint8 RGB frames, one per time.

    Raises:
        VideoError: The file is not a readable video.
    """
    reader = FrameReader(path, size)
    return reader.read(reader.indices_at(times))


def iter_frames(
    path: str | os.PathLike, fps: float, chunk: int = 64, size: Size | None = None
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Samples a video at a fixed rate, a chunk at a time, in bounded memory.

    Args:
        path: Video file.
        fps: Sampling rate; samples are at ``k / fps`` for every ``k / fps`` before
            the end of the video.
        chunk: Samples per yielded chunk.
        size: ``(height, width)`` to decode at, or None for the stored size.

    Yields:
        ``(times, frames)``: ``[n]`` float64 seconds and ``[n, 3, H, W]`` uint8
        frames, ``n <= chunk``.

    Raises:
        VideoError: The file is not a readable video.
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    reader = FrameReader(path, size)
    times = sample_times(reader.info.duration, fps)
    for start in range(0, len(times), chunk):
        sub = times[start : start + chunk]
        yield sub, reader.read(reader.indices_at(sub))


def sample_times(duration: float, fps: float) -> np.ndarray:
    """The sampling grid ``k / fps`` for all k with ``k / fps < duration``.

    Args:
        duration: Video length in seconds.
        fps: Samples per second (> 0).

    Returns:
        ``[ceil(duration * fps)]`` float64 seconds (at least one sample).
    """
    if not fps > 0:
        raise ConfigError(f"fps must be positive, got {fps}")
    return np.arange(frames_covering(duration, fps), dtype=np.float64) / fps


def frames_covering(seconds: float, rate: float) -> int:
    """Frames at ``rate`` per second needed to cover ``seconds`` (at least one), float noise aside.

    ``ceil(seconds * rate)`` within :data:`FRAME_TOLERANCE`: 1.1 s at 50 Hz is 55 frames, not 56.
    """
    return max(1, math.ceil(seconds * rate - FRAME_TOLERANCE))


def whole_frames(seconds: float, rate: float) -> int:
    """Whole frames at ``rate`` per second that fit in ``seconds``, float noise aside.

    ``floor(seconds * rate)`` within :data:`FRAME_TOLERANCE`: 0.29 s at 100 Hz is 29 frames, not 28.
    """
    return math.floor(seconds * rate + FRAME_TOLERANCE)


class FrameReader:
    """Frame-accurate random access to one video's frames.

    Opening reads the container index (no decoding beyond one frame at the end, to
    catch truncated files). Reads of nearby, increasing indices decode
    sequentially; far jumps seek to the previous keyframe.

    Args:
        path: Video file.
        size: ``(height, width)`` to decode at; or a function of the stored
            ``(height, width)`` returning it (to keep the aspect ratio); or None
            for the stored size.

    Attributes:
        info: The video's :class:`VideoInfo`.
        timestamps: ``[num_frames]`` float64 presentation time of each frame, in
            seconds from the first frame.
        size: ``(height, width)`` of the frames :meth:`read` returns.

    Raises:
        VideoError: The file is not a readable video.
    """

    def __init__(self, path: str | os.PathLike, size: Size | Callable[[int, int], Size] | None = None):
        self.path = Path(path)
        width, height, has_audio, stream_duration = check_container(self.path)
        if callable(size):
            size = size(height, width)
        self.size: Size = (height, width) if size is None else (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ConfigError(f"frame size must be positive, got {self.size} (height, width)")
        # decord misreads frames whose padded rows happen to be a multiple of the
        # width (e.g. 48 px: 144 bytes padded to 192 = 4 * 48, read as 4 channels);
        # decode at a nearby safe width and resize the last pixel or two back.
        self._decode_size = (self.size[0], _decodable_width(self.size[1]))
        self._vr = _open_decord(self.path, None if self._decode_size == (height, width) else self._decode_size)
        n = len(self._vr)
        if n == 0:
            raise VideoError(f"{self.path}: the video stream has no frames")
        starts = self._vr.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64)
        self.timestamps = starts - starts[0]
        fps = float(self._vr.get_avg_fps()) or 25.0
        last = self.timestamps[-1]
        # decord reports no usable end time for the last frame; the stream's own
        # duration covers it when present, else assume one average frame period.
        duration = stream_duration if stream_duration and stream_duration > last else last + 1.0 / fps
        self.info = VideoInfo(str(path), float(duration), fps, n, width, height, has_audio)

    def indices_at(self, times: Sequence[float] | np.ndarray) -> np.ndarray:
        """Index of the frame shown at each time (clamped to the first / last frame).

        Args:
            times: Seconds from the first frame.

        Returns:
            ``[N]`` int64 frame indices.
        """
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        idx = np.searchsorted(self.timestamps, times + _TIME_EPS, side="right") - 1
        return np.clip(idx, 0, len(self.timestamps) - 1).astype(np.int64)

    def read(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Decodes frames by index.

        Args:
            indices: Frame indices, any order, repeats allowed.

        Returns:
            ``[N, 3, H, W]`` uint8 RGB frames, contiguous.

        Raises:
            VideoError: A frame cannot be decoded (corrupt data).
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0:
            return torch.empty((0, 3, *self.size), dtype=torch.uint8)
        # Decode each distinct frame once, in increasing order (sequential decode).
        unique, inverse = np.unique(indices, return_inverse=True)
        try:
            batch = self._vr.get_batch(unique.tolist()).asnumpy()
        except Exception as exc:  # decord raises its own C++ error types
            reason = one_line(exc)
            raise VideoError(f"{self.path}: cannot decode frames {unique[0]}..{unique[-1]} ({reason})") from None
        frames = torch.from_numpy(batch).permute(0, 3, 1, 2)
        if self._decode_size != self.size:
            frames = torch.nn.functional.interpolate(
                frames.float(), size=self.size, mode="bilinear", antialias=True, align_corners=False
            ).round_().clamp_(0, 255).to(torch.uint8)
        if len(unique) != len(indices) or not np.array_equal(unique, indices):
            frames = frames[torch.from_numpy(inverse)]
        return frames.contiguous()


def _decodable_width(width: int) -> int:
    """The width nearest to ``width`` whose RGB rows decord reads correctly.

    decord treats a frame as compact when FFmpeg's padded row size is a multiple
    of the width. FFmpeg pads the width to powers of two until the row size is
    aligned (16, 32 or 64 bytes depending on the build); a width is safe when no
    such padding yields a multiple of it other than the exact 3 * width.
    """

    def safe(w: int) -> bool:
        for align in (16, 32, 64):
            step = 1
            while True:
                row = 3 * (-(-w // step) * step)
                if row % align == 0 or step >= align:
                    break
                step *= 2
            for padded in (row, -(-row // align) * align):
                if padded % w == 0 and padded != 3 * w:
                    return False
        return True

    for delta in range(width):
        for w in (width + delta, width - delta):
            if w > 0 and safe(w):
                return w
    return width


def _open_decord(path: Path, size: Size | None):
    import decord

    # decord's bundled FFmpeg logs to stderr; every failure it can report reaches
    # the user as one VideoError line instead.
    decord.logging.set_level(decord.logging.QUIET)
    kwargs = {} if size is None else {"height": size[0], "width": size[1]}
    try:
        with native_name(path) as name:  # decord takes the name as UTF-8 text
            return decord.VideoReader(name, ctx=decord.cpu(0), num_threads=0, **kwargs)
    except Exception as exc:  # decord raises its own C++ error types
        raise VideoError(f"{path}: cannot be decoded ({one_line(exc)}){_conversion_hint(path)}") from None


def _conversion_hint(path: Path) -> str:
    """What to do about a video the frame reader cannot decode although its video stream is there
    (AV1, which decord's FFmpeg lacks): '' when the file itself is the problem."""
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            codec = streams[0].codec_context.codec.canonical_name if streams else None
    except (av.FFmpegError, OSError, ValueError):
        return ""
    if codec is None:
        return ""
    return (f"; its {codec} video stream is not one the frame reader decodes: convert it first, "
            f"e.g. ffmpeg -i IN -c:v libx264 -crf 18 OUT.mp4")
