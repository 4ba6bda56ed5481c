"""One clip's evaluation: its events (visual beats, music onsets and beats) and scores.

Per clip:

- ``beat_alignment``: Bailando's score of the generated music's beats against
  the video's visual beats (no reference needed);
- ``bcs``, ``bhs``: D2M-GAN's beats coverage / hit scores of the generated
  onsets against the reference onsets, both found with D2M-GAN's settings;
- ``loris_cover``, ``loris_hit``, ``loris_f1``: LORIS's variant of the same,
  with onsets found with LORIS's settings;
- ``clap_text``: the CLAP text-music score, filled in by
  :func:`vidmusician.evaluation.evaluate.evaluate` for clips with a prompt.

A folder of clips is :mod:`vidmusician.evaluation.evaluate`'s.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError, printable
from . import metrics
from .onsets import ONSET_PRESETS, MusicRhythm, OnsetConfig, music_rhythm
from .visual_beats import VISUAL_BEAT_PRESETS, VisualBeatConfig, VisualRhythm, visual_rhythm

REFERENCE_METRICS = ("bcs", "bhs", "loris_cover", "loris_hit", "loris_f1")
METRICS = ("beat_alignment",) + REFERENCE_METRICS + ("clap_text",)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How events are found and compared.

    Attributes:
        d2m_onsets: Onset detection for D2M-GAN's BCS/BHS (its settings by
            default); its envelope also gives the music beats.
        loris_onsets: Onset detection for LORIS's scores (its settings by
            default), on the same envelope.
        visual: Visual beat picking; ``None``: the source's preset
            (:data:`~vidmusician.evaluation.visual_beats.VISUAL_BEAT_PRESETS`).
        local_fps: Rate of the visual change signal.
        source: Visual signal, ``"change"`` (CLIP patch change) or ``"flow"``.
        ba_sigma: Bailando's tolerance in seconds (default 0.12 s, 3 frames
            at 25 fps; Bailando's own is 0.05 s, 3 frames at 60 fps).
    """

    d2m_onsets: OnsetConfig = ONSET_PRESETS["d2m"]
    loris_onsets: OnsetConfig = ONSET_PRESETS["loris"]
    visual: VisualBeatConfig | None = None
    local_fps: float = 25.0
    source: str = "change"
    ba_sigma: float = metrics.DEFAULT_BA_SIGMA

    def __post_init__(self):
        if not (math.isfinite(self.ba_sigma) and self.ba_sigma > 0):
            raise ConfigError(f"--ba-sigma must be positive seconds, got {self.ba_sigma} (Bailando's is 0.05)")
        if not (math.isfinite(self.local_fps) and self.local_fps > 0):
            raise ConfigError(f"--local-fps must be positive, got {self.local_fps}")

    @property
    def visual_config(self) -> VisualBeatConfig:
        """The visual beat settings in use."""
        return VISUAL_BEAT_PRESETS[self.source] if self.visual is None else self.visual

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["visual"] = dataclasses.asdict(self.visual_config)
        out["ba_sigma_bailando"] = metrics.bailando_sigma()
        return out


@dataclasses.dataclass
class ClipResult:
    """One clip's events and scores.

    Attributes:
        name: The shared file stem.
        video: Video file.
        generated: Generated music file.
        reference: Reference music file, if any.
        visual: Visual signal and beats.
        music: Generated music's envelope, onsets and beats.
        reference_music: Reference music's, if any.
        scores: ``{metric: value}`` (``nan`` where undefined or not computed).
    """

    name: str
    video: Path
    generated: Path
    reference: Path | None
    visual: VisualRhythm
    music: MusicRhythm
    reference_music: MusicRhythm | None
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        ref = self.reference_music
        counts = {
            "visual_beats": len(self.visual.beats),
            "music_beats": len(self.music.beats),
            "generated_onsets": len(self.music.onsets),
            "reference_onsets": None if ref is None else len(ref.onsets),
            "generated_onsets_loris": len(self.music.other_onsets["loris"]),
            "reference_onsets_loris": None if ref is None else len(ref.other_onsets["loris"]),
        }
        durations = {
            "video": self.visual.duration,
            "generated": self.music.duration,
            "reference": None if self.reference_music is None else self.reference_music.duration,
        }
        return {
            "name": self.name,
            "video": printable(self.video),  # as text any JSON reader takes (see errors.printable)
            "generated": printable(self.generated),
            "reference": None if self.reference is None else printable(self.reference),
            **{k: json_float(self.scores.get(k, math.nan)) for k in METRICS},
            "counts": counts,
            "durations": durations,
        }


def score_clip(
    visual: VisualRhythm, music: MusicRhythm, reference: MusicRhythm | None, sigma: float
) -> dict[str, float]:
    """All per-clip metrics from already extracted events.

    Events are compared over the span the two sides share: music beats past
    the end of the video have no visual beat to meet (Bailando likewise cuts
    the music to the motion's length), and onsets are binned over the shorter
    of the two tracks. BCS/BHS use ``onsets`` (D2M-GAN's settings), LORIS's
    scores ``other_onsets["loris"]``.

    Args:
        visual: The video's visual beats.
        music: The generated music's onsets and beats.
        reference: The reference music's, or ``None``.
        sigma: Bailando's tolerance in seconds.

    Returns:
        ``{metric: value}`` for every name in :data:`METRICS`.
    """
    span = min(visual.duration, music.duration)
    scores = {"beat_alignment": metrics.beat_alignment_score(music.beats[music.beats < span], visual.beats, sigma)}
    scores.update({k: math.nan for k in REFERENCE_METRICS + ("clap_text",)})
    if reference is not None:
        duration = min(music.duration, reference.duration)
        scores["bcs"], scores["bhs"] = metrics.beats_scores(music.onsets, reference.onsets, duration)
        loris = metrics.loris_scores(music.other_onsets["loris"], reference.other_onsets["loris"], duration)
        scores.update(loris_cover=loris.cover, loris_hit=loris.hit, loris_f1=loris.f1)
    return scores


def evaluate_clip(name: str, video, generated, reference=None, encoder=None, settings: EvalSettings = EvalSettings(),
                  cache=None) -> ClipResult:
    """Events and scores of one clip: ``video``'s visual beats against ``generated`` music (and ``reference``).

    Args:
        name: The clip's name in the report.
        video, generated, reference: Files (``reference`` may be None).
        encoder: A loaded visual encoder for the change signal (None with ``source="flow"``).
        settings: Event detection settings.
        cache: ``cache_dir`` of the visual features.
    """
    visual = visual_rhythm(
        video,
        encoder=encoder,
        fps=settings.local_fps,
        source=settings.source,
        config=settings.visual_config,
        cache_dir=cache,
    )
    onsets = {"loris": settings.loris_onsets}
    music = music_rhythm(generated, settings.d2m_onsets, onsets)
    ref = music_rhythm(reference, settings.d2m_onsets, onsets) if reference is not None else None
    scores = score_clip(visual, music, ref, settings.ba_sigma)
    return ClipResult(name, video, generated, reference, visual, music, ref, scores)


def json_float(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def format_score(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"
