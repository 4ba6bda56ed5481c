"""Helpers for tests of code built on vidmusician: backbones and media that need no download.

Nothing here is used to make music for real; it makes models and files whose
behaviour is known, so that a test can check a path end to end in seconds.

- :mod:`vidmusician.testing.random_backbones`: MusicGens with random weights built by
  audiocraft's own builders: :func:`tiny_musicgen` (backbone names 'tiny', 'tiny-t5'),
  :func:`random_musicgen` (the real architectures: 'random-small', ...).
- :mod:`vidmusician.testing.learned_base`: :func:`learned_musicgen` ('tiny-learned'), the
  tiny MusicGen whose LM has learned synthetic music (tests of learning stand on it),
  and that music's codec.
- :mod:`vidmusician.testing.media`: small videos with known timing (:func:`flash_video`,
  :func:`cut_video`, :func:`indexed_video`, ...) and audio (:func:`click_track`), written
  with PyAV.

Example::

    from vidmusician import attach_adapters
    from vidmusician.testing import flash_video, tiny_musicgen

    flash_video("clip.mp4", flash_times=[0.5, 1.5], duration=2.0)
    vm = attach_adapters(tiny_musicgen())

The names are imported on first use: importing this package loads neither torch nor PyAV.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "tiny_musicgen": "random_backbones",
    "random_musicgen": "random_backbones",
    "learned_musicgen": "learned_base",
    "music_codec": "learned_base",
    "write_video": "media",
    "write_audio": "media",
    "flash_video": "media",
    "cut_video": "media",
    "indexed_video": "media",
    "read_index": "media",
    "click_track": "media",
    "moving_square": "media",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
