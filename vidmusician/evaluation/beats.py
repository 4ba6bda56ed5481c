"""Rhythmic events from files: music onsets and beats, visual beats.

The music's side is :mod:`vidmusician.evaluation.onsets`, the video's
:mod:`vidmusician.evaluation.visual_beats`; this module gathers both under the
name they had together.
"""

from __future__ import annotations

from .onsets import ONSET_PRESETS, MusicRhythm, OnsetConfig, load_audio, music_rhythm  # noqa: F401
from .visual_beats import (VISUAL_BEAT_PRESETS, VisualBeatConfig, VisualRhythm, beat_threshold,  # noqa: F401
                           change_signal, pick_visual_beats, visual_rhythm)
