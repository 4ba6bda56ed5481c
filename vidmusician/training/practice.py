"""Practice music videos, to learn the training path on before real data: ``vidmusician prepare --practice N``.

Each clip is a music video whose music follows its picture in the way the adapters
learn: the picture is one of a few scene colours with a drifting square, and a white
frame at each of the music's events; the soundtrack (AAC, as in a downloaded music
video) is the synthetic music of the 'tiny-learned' base
(:mod:`vidmusician.learned_base`), its style given by the scene colour and an event at
each white frame, played by that base's codec. Prepared with ``--backbone tiny-learned
--encoder tiny``, the adapters learn it on a CPU in minutes. Clip i is the same on
every machine and every run (its randomness is seeded by i).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write

SECONDS = 8.0  # two 4 s windows a clip (`--window 4 --hop 4`)
FPS = 25  # video frame rate: every other codec frame (50 Hz) can hold an event
SIZE = 64  # pixels
AAC_RATE, AAC_KBPS = 48000, 128  # what music videos carry
# Scene colour of each style (learned_base.STYLES of them).
PALETTE = np.array([[200, 30, 30], [30, 160, 60], [40, 60, 220], [230, 200, 40]], np.uint8)
# A clip being written (atomic_write's temporary name): writer's process id, thread id.
PARTIAL = re.compile(r"\.practice-\d+\.mp4\.(\d+)\.\d+\.part")
CLIP = re.compile(r"practice-(\d+)\.mp4")  # a finished clip: its index


def write_practice_video(path, index: int, seconds: float = SECONDS) -> Path:
    """Writes practice clip ``index``: a scene colour, a drifting square and a white frame at each musical event.

    Args:
        path: the .mp4 to write.
        index: which clip (the seed of its events, style and phase).
        seconds: its length.

    Returns:
        ``path`` as a Path.
    """
    import julius

    from .. import learned_base as lb
    from ..testing.media import write_video

    rng = random.Random(index)
    num_frames = int(round(seconds * lb.FRAME_RATE))  # codec frames
    step = lb.FRAME_RATE // FPS  # codec frames per video frame
    style = index % lb.STYLES
    events = lb.event_frames(rng, num_frames, fps=FPS)  # each on a video frame, so the picture can show it
    music = lb.synthetic_audio(lb.synthetic_codes(events, style, rng.randrange(lb.PERIOD), num_frames))
    samples = julius.resample_frac(music.float().reshape(-1), lb.SAMPLE_RATE, AAC_RATE).numpy()[None]

    frames = np.empty((num_frames // step, SIZE, SIZE, 3), np.uint8)
    frames[:] = PALETTE[style]
    for t in range(len(frames)):
        x = (t // 2) % (SIZE - 8)  # a square drifts one pixel every two frames: the scene is never still
        frames[t, 28:36, x:x + 8] = 255 - PALETTE[style]
    frames[[f // step for f in events]] = 255

    path = Path(path)
    atomic_write(path, lambda tmp: write_video(tmp, frames, FPS, audio=samples, sample_rate=AAC_RATE,
                                               audio_bit_rate=AAC_KBPS * 1000, container_format="mp4"))
    return path


def write_practice_videos(folder, count: int) -> list[Path]:
    """Fills ``folder`` with practice clips ``practice-000.mp4`` ... (those already there are kept, so a rerun
    writes only what is missing).

    Raises:
        ConfigError: ``count`` is not positive, ``folder`` holds other files (a folder of real videos), or
            more practice clips than ``count`` (prepare takes every video of the folder, not ``count``).
    """
    if count < 1:
        raise ConfigError(f"--practice {count}: give the number of practice videos to write (e.g. 16)")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder; --practice writes its videos into the folder SRC")
    names = [f"practice-{i:03d}.mp4" for i in range(count)]
    others = sorted(p.name for p in folder.iterdir()
                    if not (p.name.startswith("practice-") or PARTIAL.fullmatch(p.name))) if folder.is_dir() else []
    if others:
        raise ConfigError(f"{folder}: holds other files ({others[0]}, ...); --practice writes into an empty or new "
                          f"folder, so that the practice set is not mixed with real videos")
    held = sorted(int(m.group(1)) for m in map(CLIP.fullmatch, os.listdir(folder) if folder.is_dir() else []) if m)
    if held and held[-1] >= count:
        raise ConfigError(f"{folder}: holds practice videos up to practice-{held[-1]:03d}.mp4, past the {count} "
                          f"--practice {count} asks for (prepare takes them all); give --practice {held[-1] + 1} (or "
                          f"leave --practice out) to prepare the ones there, or write {count} into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial_clips(folder)
    return [folder / name if (folder / name).is_file() else write_practice_video(folder / name, i)
            for i, name in enumerate(names)]


def remove_partial_clips(folder: Path) -> None:
    """Removes the half-written clips a killed run left (a live writer's, another run at work, are kept)."""
    for path in folder.iterdir():
        match = PARTIAL.fullmatch(path.name)
        if match and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this run writes one clip at a time: a name of its own is a leftover of a reused pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
