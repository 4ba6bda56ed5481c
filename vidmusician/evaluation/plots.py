"""Plots of visual beats against music onsets, one clip per PNG.

Uses matplotlib's Agg backend (no display needed); matplotlib is imported only
when a plot is drawn, so the rest of the evaluation works without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write

if TYPE_CHECKING:
    from .onsets import MusicRhythm
    from .visual_beats import VisualRhythm

# One color per kind of event, kept across both panels.
_VISUAL = "tab:red"
_ONSET = "tab:blue"
_BEAT = "tab:green"
_REFERENCE = "0.45"


def plot_rhythm(
    path: str | Path,
    visual: VisualRhythm,
    music: MusicRhythm,
    reference: MusicRhythm | None = None,
    title: str = "",
) -> Path:
    """Draws the video change signal and visual beats above the music onset envelope and onsets.

    Both panels share one time axis in seconds. The visual beats are repeated
    as faint lines over the music panel, so misaligned onsets stand out.

    Args:
        path: PNG file to write (written to a temporary name, then renamed).
        visual: The video's signal and beats.
        music: The generated music's envelope, onsets and beats.
        reference: The reference music's, drawn as gray ticks under the
            envelope, or ``None``.
        title: Figure title.

    Returns:
        ``path`` as a Path.
    """
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: `pip install matplotlib`, or run without --plot") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 4.8), constrained_layout=True)
    try:
        label = "optical flow" if visual.source == "flow" else "visual change"
        # Scaled to the larger of the signal and the beat threshold, so a clip
        # with no beat shows how far its change stays below the threshold.
        level = None if visual.baseline is None else visual.baseline + visual.threshold
        scale = max(np.max(visual.signal, initial=0.0), 0.0 if level is None else np.max(level, initial=0.0))
        scale = float(scale) if scale > 0 else 1.0
        top.plot(visual.times, visual.signal / scale, color="0.25", lw=1.0, label=label)
        if level is not None:
            top.plot(visual.times, level / scale, color=_VISUAL, lw=0.8, ls=":", label="beat threshold")
        _events(top, visual.beats, _VISUAL, "visual beats")
        top.set_ylabel(label + "\n(scaled)")
        top.set_ylim(0, 1.08)

        bottom.plot(music.envelope_times, music.envelope, color="0.25", lw=0.8, label="onset envelope")
        for i, t in enumerate(visual.beats):
            bottom.axvline(t, color=_VISUAL, alpha=0.22, lw=4, label="visual beats" if i == 0 else None)
        _events(bottom, music.onsets, _ONSET, "onsets")
        if len(music.beats):
            bottom.plot(music.beats, np.full(len(music.beats), 1.04), "v", color=_BEAT, ms=5, label="beats")
        if reference is not None and len(reference.onsets):
            ticks = np.full(len(reference.onsets), -0.06)
            bottom.plot(reference.onsets, ticks, "|", color=_REFERENCE, ms=9, mew=1.5, label="reference onsets")
        bottom.set_ylim(-0.12, 1.1)
        bottom.set_ylabel("generated music\n(onset strength)")
        bottom.set_xlabel("time (s)")
        end = max(visual.duration, music.duration)
        bottom.set_xlim(0, end if end > 0 else 1)
        # Whole-second grid lines: BCS/BHS count onsets in 1-second bins.
        bottom.set_xticks(np.arange(0, math.ceil(end) + 1, max(1, math.ceil(end / 20))))
        for ax in (top, bottom):
            ax.grid(axis="x", color="0.85", lw=0.6)
            # Outside the axes, so no legend hides an event.
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
        if title:
            fig.suptitle(title, fontsize=10)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        return path
    finally:
        plt.close(fig)


def plot_clip(clip, path: str | Path) -> Path:
    """:func:`plot_rhythm` for one evaluated clip, its scores in the title.

    Args:
        clip: a :class:`~vidmusician.evaluation.clips.ClipResult` (not imported here:
            the evaluation imports its plots, not the other way round).
        path: the PNG to write.
    """
    shown = {k: v for k, v in clip.scores.items() if v is not None and math.isfinite(v)}
    scores = "  ".join(f"{k} {v:.2f}" for k, v in shown.items())
    return plot_rhythm(path, clip.visual, clip.music, clip.reference_music, f"{clip.name}    {scores}".strip())


def _events(ax, times: np.ndarray, color: str, label: str) -> None:
    for i, t in enumerate(times):
        ax.axvline(t, color=color, lw=1.0, ls="--", label=label if i == 0 else None)
