"""Example clips for the page, drawn at start-up (nothing to download).

Each is a short H.264 mp4 whose picture changes at known times, so the
alignment plot has visual beats to show: a square that jumps to a new place
on every beat, at a few tempos.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from ..fileio import atomic_write

__all__ = ["EXAMPLES", "write_example", "write_examples"]

# (file stem, beats per minute, seconds, text prompt)
EXAMPLES = (
    ("jumps_90bpm", 90, 4.0, "slow piano, calm"),
    ("jumps_120bpm", 120, 4.0, "drums and bass, upbeat"),
    ("jumps_150bpm", 150, 4.0, ""),
)

_SIZE = 128
_FPS = 25


def write_example(path, bpm: float, seconds: float, size: int = _SIZE, fps: int = _FPS) -> Path:
    """Writes a clip of a square that jumps to another place ``bpm`` times a minute.

    Args:
        path: the .mp4 to write.
        bpm: jumps per minute.
        seconds: length of the clip.
        size: width and height in pixels.
        fps: frame rate.

    Returns:
        ``path`` as a Path.
    """
    import av

    path = Path(path)
    rng = np.random.default_rng(int(bpm))
    num_frames = int(round(seconds * fps))
    side = size // 4
    spots = rng.integers(0, size - side, size=(int(seconds * bpm / 60) + 2, 2))
    colors = rng.integers(80, 256, size=(len(spots), 3), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps))
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for i in range(num_frames):
                beat = int(i / fps * bpm / 60)
                frame = np.full((size, size, 3), 24, dtype=np.uint8)
                y, x = spots[beat]
                frame[y:y + side, x:x + side] = colors[beat]
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    atomic_write(path, write)
    return path


def write_examples(folder) -> list[list]:
    """Writes :data:`EXAMPLES` into ``folder``; returns ``[[video, text], ...]`` for the page."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [[str(write_example(folder / f"{stem}.mp4", bpm, seconds)), text]
            for stem, bpm, seconds, text in EXAMPLES]
