"""Synthetic media for tests: small videos with known timing, and audio.

Everything here is made with PyAV (its bundled FFmpeg libraries; no ffmpeg binary)
and kept tiny (64x64 px, a few seconds) so a test that writes a video costs tens of
milliseconds. ``from vidmusician.testing.media import flash_video`` (the project's
own tests also say ``from media import flash_video``, through ``tests/media.py``).

Timing convention: frame ``i`` of a constant-rate video is shown from ``i / fps``
to ``(i + 1) / fps``; "an event at time t" lands on frame ``round(t * fps)``.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

# A millisecond time base lets variable-frame-rate videos place frames anywhere.
_TIME_BASE = Fraction(1, 1000)
# Frame index codes: 8 vertical bars, one bit each (MSB on the left); bars are
# 8 px wide so compression never flips a bit.
_CODE_BITS = 8


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 32000,
    times: Sequence[float] | None = None,
    codec: str = "libx264",
    faststart: bool = False,
    rotation: int = 0,
    audio_bit_rate: int | None = None,
    container_format: str | None = None,
) -> Path:
    """Writes frames (and optionally audio) to an mp4/mkv/mov file.

    Args:
        path: Output file; the container follows the suffix.
        frames: ``[T, H, W, 3]`` uint8 RGB frames; H and W must be even (yuv420p).
        fps: Nominal frame rate; frame ``i`` is shown at ``i / fps`` unless
            ``times`` is given.
        audio: Optional float audio in [-1, 1], ``[S]`` (mono) or ``[C, S]``
            (C = 1 or 2), encoded as AAC.
        sample_rate: Sample rate of ``audio``.
        times: Optional presentation time in seconds of each frame, strictly
            increasing, for variable-frame-rate videos.
        codec: ``libx264`` (default; with B-frames, the hard case for seeking) or
            ``mpeg4``.
        faststart: Put the mp4 index before the frames (as streaming sites do), so
            a truncated copy still opens and only its frames are missing.
        rotation: Display rotation in degrees (counter-clockwise) stored in the
            container, as phones do for portrait videos; players show the frames turned.
        audio_bit_rate: the AAC encoder's bits per second (None: its default).
        container_format: the container when the suffix does not say it (a temporary
            name, e.g. ``mp4``).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"frames must be [T, H, W, 3] RGB with T >= 1, got shape {frames.shape}")
    _check_size(*frames.shape[1:3])
    if times is None:
        times = np.arange(len(frames)) / fps
    pts = np.round(np.asarray(times, dtype=np.float64) / float(_TIME_BASE)).astype(np.int64)
    if len(pts) != len(frames) or np.any(np.diff(pts) <= 0):
        raise ValueError(f"times must be one per frame ({len(frames)}) and increasing by at least a millisecond")
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        stream.time_base = _TIME_BASE
        stream.codec_context.time_base = _TIME_BASE
        astream = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
            astream = container.add_stream("aac", rate=sample_rate, layout=layout)
            if audio_bit_rate:
                astream.bit_rate = audio_bit_rate
        for frame, p in zip(frames, pts):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = int(p)
            vf.time_base = _TIME_BASE
            container.mux(stream.encode(vf))
        container.mux(stream.encode())
        if astream is not None:
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
            af.sample_rate = sample_rate
            af.pts = 0
            container.mux(astream.encode(af))
            container.mux(astream.encode())
    return path


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = 32000) -> Path:
    """Writes an audio-only file (AAC in .m4a/.mp4, or PCM in .wav); no video stream."""
    path = Path(path)
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
    codec = "pcm_s16le" if path.suffix == ".wav" else "aac"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
        af.sample_rate = sample_rate
        af.pts = 0
        container.mux(stream.encode(af))
        container.mux(stream.encode())
    return path


def write_image(path: str | Path, frame: np.ndarray) -> Path:
    """Writes one ``[H, W, 3]`` uint8 frame as a still image (PNG or JPEG by suffix)."""
    path = Path(path)
    codec = "png" if path.suffix == ".png" else "mjpeg"
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height = frame.shape[1], frame.shape[0]
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def zero_frame_video(path: str | Path, size: int = 64, sample_rate: int = 32000) -> Path:
    """A Matroska file with a video stream that holds no frames (and one second of audio).

    (mp4 drops a track without samples, so an empty video stream needs .mkv.)
    """
    path = Path(path)
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        astream = container.add_stream("aac", rate=sample_rate, layout="mono")
        af = av.AudioFrame.from_ndarray(np.zeros((1, sample_rate), np.float32), format="fltp", layout="mono")
        af.sample_rate = sample_rate
        af.pts = 0
        container.mux(astream.encode(af))
        container.mux(astream.encode())
        container.mux(stream.encode())
    return path


def truncated_copy(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """Copies the first ``keep`` fraction of a file's bytes (a partial download)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def click_track(times: Sequence[float], duration: float, sample_rate: int = 32000) -> np.ndarray:
    """A silent mono track with a 5 ms decaying 1 kHz click starting at each time.

    Returns:
        ``[round(duration * sample_rate)]`` float32 in [-1, 1].
    """
    out = np.zeros(int(round(duration * sample_rate)), dtype=np.float32)
    n = int(0.005 * sample_rate)
    t = np.arange(n) / sample_rate
    click = (0.9 * np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.001)).astype(np.float32)
    for time in times:
        start = int(round(time * sample_rate))
        seg = out[start : start + n]
        seg += click[: len(seg)]
    return out


def moving_square(num_frames: int, size: int = 64, level: int = 40) -> np.ndarray:
    """Dark frames with a small gray square drifting left to right (slow, steady motion)."""
    frames = np.full((num_frames, size, size, 3), level // 2, dtype=np.uint8)
    side = max(size // 8, 2)
    for i in range(num_frames):
        x = int((size - side) * (i / max(num_frames - 1, 1)))
        y = size // 2 - side // 2
        frames[i, y : y + side, x : x + side] = 3 * level
    return frames


def flash_video(
    path: str | Path,
    flash_times: Sequence[float],
    duration: float,
    fps: int = 25,
    size: int = 64,
    audio: np.ndarray | None = None,
    sample_rate: int = 32000,
    levels: int | Sequence[int] = 255,
) -> Path:
    """A dark video with a slowly moving square and a full-white frame at each flash time.

    The flash at time t is frame ``round(t * fps)``; every other frame differs from
    its neighbour only by the square's small step. ``levels``: each flash's grey level
    (one for all, or one per flash): through the tiny encoder a flash of 110 changes the
    patches about a quarter as much as one of 255, still hundreds of times the square's step.
    """
    _check_size(size, size)
    frames = moving_square(_frame_count(duration, fps), size)
    levels = [levels] * len(flash_times) if isinstance(levels, int) else list(levels)
    if len(levels) != len(flash_times):
        raise ValueError(f"{len(levels)} levels for {len(flash_times)} flashes")
    for t, level in zip(flash_times, levels):
        if not 0 <= round(t * fps) < len(frames):
            raise ValueError(f"flash at {t} s is outside the {duration} s video (frames 0 to {len(frames) - 1} "
                             f"at {fps} fps)")
        frames[int(round(t * fps))] = level
    return write_video(path, frames, fps, audio=audio, sample_rate=sample_rate)


def cut_video(
    path: str | Path,
    cut_times: Sequence[float],
    duration: float,
    fps: int = 25,
    size: int = 64,
    audio: np.ndarray | None = None,
    sample_rate: int = 32000,
) -> Path:
    """Scenes with hard cuts: scene k starts at frame ``round(cut_times[k-1] * fps)``.

    Scenes alternate solid colors and striped / checkered patterns (each with the
    moving square on top so no scene is perfectly static), so consecutive scenes
    differ in color and layout.
    """
    _check_size(size, size)
    n = _frame_count(duration, fps)
    starts = [0] + [int(round(t * fps)) for t in cut_times] + [n]
    if any(not 0 < start < n for start in starts[1:-1]):
        raise ValueError(f"cut times {list(cut_times)} must fall inside the {duration} s video")
    frames = moving_square(n, size)
    square = frames != frames[:, :1, :1]  # where the drifting square is
    yy, xx = np.mgrid[:size, :size]
    for k in range(len(starts) - 1):
        frames[starts[k] : starts[k + 1]] = _scene(k, yy, xx)
    frames[square] = 200
    return write_video(path, frames, fps, audio=audio, sample_rate=sample_rate)


def _check_size(height: int, width: int) -> None:
    """Raises ValueError unless frames of ``height`` x ``width`` can be written as yuv420p."""
    # yuv420p stores colour at half resolution in both directions: libx264 refuses odd sizes.
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise ValueError(f"frame size {width}x{height} px: width and height must be even (yuv420p) and at least 2")


def _frame_count(duration: float, fps: float) -> int:
    """Frames of a ``duration`` s video at ``fps``; ValueError when that is none."""
    n = int(round(duration * fps))
    if n < 1:
        raise ValueError(f"duration {duration} s holds no frame at {fps} fps; give at least {1 / fps:g} s")
    return n


def _scene(k: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The background of scene k: ``[H, W, 3]`` uint8."""
    palette = np.array([[200, 30, 30], [30, 160, 60], [40, 60, 220], [230, 200, 40], [160, 40, 200]], np.uint8)
    a, b = palette[k % 5], palette[(k + 2) % 5]
    pattern = [
        np.zeros_like(yy, bool),  # solid
        (xx // 8) % 2 == 0,  # vertical stripes
        (yy // 8 + xx // 8) % 2 == 0,  # checkerboard
        (yy // 16) % 2 == 0,  # horizontal bands
    ][k % 4]
    return np.where(pattern[..., None], b, a).astype(np.uint8)


def indexed_frames(num_frames: int, size: int = 64) -> np.ndarray:
    """Frames that show their own index (mod 256) as 8 black/white bars; see :func:`read_index`."""
    if size < 8 * _CODE_BITS // 2 or size % _CODE_BITS:
        raise ValueError(f"size must be a multiple of {_CODE_BITS} and at least {8 * _CODE_BITS // 2}, got {size}")
    bar = size // _CODE_BITS
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    for i in range(num_frames):
        for bit in range(_CODE_BITS):
            if (i >> (_CODE_BITS - 1 - bit)) & 1:
                frames[i, :, bit * bar : (bit + 1) * bar] = 255
    return frames


def indexed_video(
    path: str | Path,
    num_frames: int,
    fps: float = 25,
    times: Sequence[float] | None = None,
    size: int = 64,
    codec: str = "libx264",
) -> Path:
    """A video whose frame i shows i (mod 256); ``times`` makes it variable-rate."""
    return write_video(path, indexed_frames(num_frames, size), fps, times=times, codec=codec)


def read_index(frames) -> np.ndarray:
    """Decodes the index shown by frames of :func:`indexed_video`.

    Args:
        frames: ``[N, 3, H, W]`` (torch or numpy, as returned by ``read_frames``) or
            ``[N, H, W, 3]`` uint8 frames, at any size.

    Returns:
        ``[N]`` int64 indices (mod 256).
    """
    frames = np.asarray(frames)
    if frames.shape[1] == 3 and frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    n, _, w, _ = frames.shape
    # Sample each bar at its center column, averaged over rows and channels.
    centers = ((np.arange(_CODE_BITS) + 0.5) * w / _CODE_BITS).astype(int)
    bits = frames[:, :, centers].astype(np.float32).mean(axis=(1, 3)) > 127
    weights = 1 << np.arange(_CODE_BITS - 1, -1, -1)
    return (bits * weights).sum(axis=1).astype(np.int64)
