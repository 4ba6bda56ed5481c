"""Evaluating generated music against its videos (and reference music), folder by folder.

Files are matched by stem: ``videos/clip.mp4`` goes with ``generated/clip.wav``
(or ``.flac``, ``.mp3``, ``.mp4`` with an audio track, ...) and, when a
reference folder is given, ``reference/clip.*``. The reference folder may be
the video folder itself, to compare against the videos' own soundtracks.

Per clip:

- ``beat_alignment``: Bailando's score of the generated music's beats against
  the video's visual beats (no reference needed);
- ``bcs``, ``bhs``: D2M-GAN's beats coverage / hit scores of the generated
  onsets against the reference onsets, both found with D2M-GAN's settings;
- ``loris_cover``, ``loris_hit``, ``loris_f1``: LORIS's variant of the same,
  with onsets found with LORIS's settings.

With a text prompt per clip: ``clap_text``, the CLAP text-music score
(:mod:`vidmusician.evaluation.embedders`).

Over the set: the mean of each (skipping undefined values), and the Fréchet
audio distance of generated vs reference music under each embedder given
(CLAP, VGGish, or one of the caller's).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..audio_io import read_tags
from ..errors import ConfigError, printable
from ..fileio import atomic_write
from ..video.features import VisualEncoder, load_encoder
from . import metrics
from .beats import (ONSET_PRESETS, VISUAL_BEAT_PRESETS, MusicRhythm, OnsetConfig, VisualBeatConfig, VisualRhythm,
                    load_audio, music_rhythm, visual_rhythm)
from .embedders import clap_text_scores
from .files import list_videos, match_audio
from .plots import plot_clip

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
            (:data:`~vidmusician.evaluation.beats.VISUAL_BEAT_PRESETS`).
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
            **{k: _json_float(self.scores.get(k, math.nan)) for k in METRICS},
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


# --------------------------------------------------------------------------- #
# Running


@dataclasses.dataclass
class EvalReport:
    """What :func:`evaluate` found.

    Attributes:
        clips: One result per matched clip, by name.
        means: ``{metric: mean over clips}`` (see :func:`metrics.mean_scores`).
        frechet_distance: Generated vs reference, by embedder name (empty
            without an embedder).
        unmatched: Videos with no generated file, and clips with no reference
            file when a reference folder was given.
        settings: The settings used.
        kl_divergence: PaSST label KL divergences (see
            :func:`vidmusician.evaluation.audio_kl.passt_kl_divergence`), or ``None``.
        encoder: The visual encoder of the change signal: ``{"spec", "activation",
            "source"}`` (source: given, recorded in the generated files, or
            default), or ``None`` with optical flow.
    """

    clips: list[ClipResult]
    means: dict[str, float]
    frechet_distance: dict[str, float]
    unmatched: dict[str, list[str]]
    settings: EvalSettings
    kl_divergence: dict[str, float] | None = None
    encoder: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "files": [c.to_dict() for c in self.clips],
            "mean": {k: _json_float(v) for k, v in self.means.items()},
            "frechet_distance": {k: _json_float(v) for k, v in self.frechet_distance.items()},
            "unmatched": {k: [printable(n) for n in v] for k, v in self.unmatched.items()},
            "kl_divergence": self.kl_divergence,
            "encoder": self.encoder,
        }

    def write_json(self, path: str | Path) -> Path:
        """Writes the report as sorted JSON, atomically (a temporary file, then renamed)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return path

    def table(self) -> str:
        """A fixed-width table of per-clip scores and their means."""
        # The text score only where a prompt was given.
        shown = [k for k in METRICS if k != "clap_text" or math.isfinite(self.means.get(k, math.nan))]
        heads = ("file", *shown)
        rows = [[c.name] + [_fmt(c.scores[k]) for k in shown] for c in self.clips]
        rows.append(["mean"] + [_fmt(self.means[k]) for k in shown])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]

        def line(cells: list[str]) -> str:
            # Names left-aligned, numbers right-aligned.
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = line(["-" * w for w in widths])
        out = [line(list(heads)), rule] + [line(r) for r in rows[:-1]] + [rule, line(rows[-1])]
        out += [f"frechet_distance[{k}]: {_fmt(v)}" for k, v in self.frechet_distance.items()]
        if self.encoder is not None:
            out.append(f"visual encoder: {self.encoder['spec']} ({self.encoder['activation']}, {self.encoder['source']})")
        if self.kl_divergence is not None:
            out.append(f"kl_divergence[passt]: {_fmt(self.kl_divergence['kld'])}")
        return "\n".join(out)


def evaluate(
    videos: str | Path,
    generated: str | Path,
    reference: str | Path | None = None,
    *,
    encoder: Any = None,
    settings: EvalSettings = EvalSettings(),
    embedders: Mapping[str, metrics.Embedder] | None = None,
    prompts: Mapping[str, str] | str | None = None,
    text_embedder: Any = None,
    kl_metric: Any = None,
    plot_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    feature_cache: str | Path | bool | None = None,
) -> EvalReport:
    """Evaluates every generated file that matches a video by stem.

    Args:
        videos: Folder of input videos.
        generated: Folder of generated music.
        reference: Folder of reference music (may be ``videos``, to use the
            videos' own soundtracks), or ``None`` for the video-only metric.
        encoder: Visual encoder for the change signal: a spec for
            :func:`vidmusician.video.features.load_encoder`, a loaded encoder, or
            ``None`` for the default one. Loaded once for all clips.
        settings: Event detection settings.
        embedders: Embedders for the Fréchet audio distance, by name (needs
            ``reference``). Each receives audio at its ``sample_rate``
            attribute if it has one, else at 32 kHz.
        prompts: Text prompt of each clip, by name, for the CLAP text-music
            score (clips without one have none), or one prompt for all.
        text_embedder: The CLAP model for that score (a
            :class:`~vidmusician.evaluation.embedders.ClapEmbedder`); needed with
            ``prompts``.
        kl_metric: When given (a :class:`vidmusician.evaluation.audio_kl.PasstKL`), the
            KL divergence of its classifier's label distributions, generated
            vs reference (needs ``reference``).
        plot_dir: When given, one PNG per clip is written there.
        log: Receives one line per clip and per warning (e.g. ``print``).
        feature_cache: ``cache_dir`` of
            :func:`vidmusician.video.features.extract_features` (``True``: the
            default folder), so repeated evaluations of one video set encode
            the videos once.

    Returns:
        The :class:`EvalReport`.

    Raises:
        VidMusicianError: A folder is missing, nothing matches, or a file
            cannot be read (the message names the file).
    """
    log = log or (lambda line: None)
    embedders = dict(embedders or {})
    if (embedders or kl_metric is not None) and reference is None:
        raise ConfigError("a Fréchet distance or KL divergence needs reference music; pass --reference")
    if prompts and text_embedder is None:
        raise ConfigError("a CLAP text-music score needs a CLAP model; pass text_embedder")
    vids = list_videos(videos)
    gens = match_audio(list(vids), generated, "generated", log)
    if not gens:
        raise ConfigError(
            f"{generated}: no generated file matches a video in {videos} by name; "
            f"name each one after its video (clip.mp4 -> clip.wav)"
        )
    refs = match_audio(list(gens), reference, "reference", log) if reference is not None else {}
    if reference is not None and not refs:
        raise ConfigError(f"{reference}: no reference file matches a generated file by name; check --reference")
    unmatched = {"no_generated": sorted(set(vids) - set(gens))}
    if reference is not None:
        unmatched["no_reference"] = sorted(set(gens) - set(refs))
    what = {"no_generated": "skipped, no generated file", "no_reference": "no reference file, scored without one"}
    for key, names in unmatched.items():
        if names:
            log(f"warning: {len(names)} video(s) {what[key]}: {', '.join(map(printable, names))}")

    encoder_source = "given"
    if encoder is None and settings.source == "change":
        encoder, encoder_source = encoder_of(gens.values(), log)
    encoder = _load_encoder(encoder) if settings.source == "change" else None
    clips = []
    for name in sorted(gens):
        # The report, the log and --prompts name a clip as text (a file name's bytes that are
        # not UTF-8 as \xNN); its plot is named after the video's own bytes.
        clip = evaluate_clip(printable(name), vids[name], gens[name], refs.get(name), encoder, settings,
                             feature_cache)
        log(f"{clip.name}: " + ", ".join(f"{k}={_fmt(clip.scores[k])}" for k in METRICS if k != "clap_text"))
        if plot_dir is not None:
            plot_clip(clip, Path(plot_dir) / f"{name}.png")
        clips.append(clip)

    if prompts:
        texts = [prompts if isinstance(prompts, str) else prompts.get(c.name) for c in clips]
        for clip, score in zip(clips, clap_text_scores([c.generated for c in clips], texts, text_embedder)):
            clip.scores["clap_text"] = score
    fd = {}
    paired = [c for c in clips if c.reference is not None]
    for name, embedder in embedders.items():
        rate = int(getattr(embedder, "sample_rate", 32000))
        gen = [load_audio(c.generated, rate) for c in paired]
        ref = [load_audio(c.reference, rate) for c in paired]
        fd[name] = metrics.frechet_audio_distance(gen, ref, rate, embedder)
        log(f"frechet_distance[{name}]: {_fmt(fd[name])}")
    kl = None
    if kl_metric is not None:
        from .audio_kl import passt_kl_divergence  # audiocraft's metrics and PaSST: only when asked for

        kl = passt_kl_divergence([c.generated for c in paired], [c.reference for c in paired], kl_metric)
    means = metrics.mean_scores([c.scores for c in clips], METRICS)
    used = None if encoder is None else {"spec": encoder.name, "activation": encoder.activation,
                                         "source": encoder_source}
    return EvalReport(clips, means, fd, unmatched, settings, kl, used)


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


def encoder_of(generated: Iterable[Path], log: Callable[[str], None]) -> tuple[str | None, str]:
    """The visual encoder the generated music was made with, from the tags `generate` writes.

    Returns ``(spec, source)``: the recorded spec when every tagged file agrees
    (``"recorded in the generated files"``), else ``(None, "default")``, which
    loads ``ViT-B-32:openai``.
    """
    recorded = {read_tags(path).get("encoder") for path in generated} - {None}
    if len(recorded) == 1:
        return recorded.pop(), "recorded in the generated files"
    if len(recorded) > 1:
        log(f"warning: the generated files were made with different encoders ({', '.join(sorted(recorded))}); "
            f"using the default, pass --encoder to choose")
    return None, "default"


def _load_encoder(spec: Any) -> Any:
    # Loaded here once, not by extract_features once per clip.
    return spec if isinstance(spec, VisualEncoder) else load_encoder(spec)


# --------------------------------------------------------------------------- #
# Small helpers


def _json_float(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"
