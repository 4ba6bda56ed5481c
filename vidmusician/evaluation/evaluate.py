"""Evaluating generated music against its videos (and reference music), folder by folder.

Files are matched by stem: ``videos/clip.mp4`` goes with ``generated/clip.wav``
or ``generated/clip_music.wav``, the name ``vidmusician generate`` gives it (or
``.flac``, ``.mp3``, ``.mp4`` with an audio track, ...) and, when a reference
folder is given, ``reference/clip.*``. The reference folder may be
the video folder itself, to compare against the videos' own soundtracks.

Per clip: the scores of :mod:`vidmusician.evaluation.clips` (beat alignment, and
with reference music BCS/BHS and LORIS's), and with a text prompt per clip
``clap_text``, the CLAP text-music score (:mod:`vidmusician.evaluation.embedders`).

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
from ..batch import OUTPUT_TAG
from ..errors import ConfigError, printable
from ..fileio import atomic_write
from ..video.encoder_specs import ACTIVATION_NAMES, natural_activation
from ..video.features import VisualEncoder, load_encoder
from . import frechet, metrics
from .clips import METRICS, REFERENCE_METRICS, ClipResult, EvalSettings, score_clip  # noqa: F401  (here too)
from .clips import evaluate_clip, format_score, json_float
from .embedders import clap_text_scores
from .files import list_videos, match_audio, without_audio
from .onsets import load_audio
from .plots import plot_clip


@dataclasses.dataclass
class EvalReport:
    """What :func:`evaluate` found.

    Attributes:
        clips: One result per matched clip, by name.
        means: ``{metric: mean over clips}`` (see :func:`metrics.mean_scores`).
        frechet_distance: Generated vs reference, by embedder name (empty
            without an embedder).
        unmatched: Videos with no generated file, and when a reference folder
            was given, clips with no reference file and clips whose reference
            file has no audio stream (both scored without a reference).
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
            "mean": {k: json_float(v) for k, v in self.means.items()},
            "frechet_distance": {k: json_float(v) for k, v in self.frechet_distance.items()},
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
        rows = [[c.name] + [format_score(c.scores[k]) for k in shown] for c in self.clips]
        rows.append(["mean"] + [format_score(self.means[k]) for k in shown])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]

        def line(cells: list[str]) -> str:
            # Names left-aligned, numbers right-aligned.
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = line(["-" * w for w in widths])
        out = [line(list(heads)), rule] + [line(r) for r in rows[:-1]] + [rule, line(rows[-1])]
        out += [f"frechet_distance[{k}]: {format_score(v)}" for k, v in self.frechet_distance.items()]
        if self.encoder is not None:
            out.append(f"visual encoder: {self.encoder['spec']} ({self.encoder['activation']}, {self.encoder['source']})")
        if self.kl_divergence is not None:
            out.append(f"kl_divergence[passt]: {format_score(self.kl_divergence['kld'])}")
        return "\n".join(out)


def evaluate(
    videos: str | Path,
    generated: str | Path,
    reference: str | Path | None = None,
    *,
    encoder: Any = None,
    settings: EvalSettings = EvalSettings(),
    embedders: Mapping[str, frechet.Embedder] | None = None,
    prompts: Mapping[str, str] | str | None = None,
    text_embedder: Any = None,
    kl_metric: Any = None,
    plot_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    feature_cache: str | Path | bool | None = None,
) -> EvalReport:
    """Evaluates every generated file that matches a video by stem (``clip.*`` or ``clip_music.*``).

    Args:
        videos: Folder of input videos.
        generated: Folder of generated music.
        reference: Folder of reference music (may be ``videos``, to use the
            videos' own soundtracks), or ``None`` for the video-only metric.
        encoder: Visual encoder for the change signal: a spec for
            :func:`vidmusician.video.features.load_encoder` (built with the
            activation the generated files record for it), a loaded encoder, or
            ``None`` for the one the files record (see :func:`encoder_of`), else
            the default. Loaded once for all clips.
        settings: Event detection settings.
        embedders: Embedders for the Fréchet audio distance, by name (needs
            ``reference``). Each receives audio at its ``sample_rate``
            attribute if it has one, else at 32 kHz.
        prompts: Text prompt of each clip, by the name of its video (``clip``
            or ``clip.mp4``; see :func:`prompts_by_clip`), for the CLAP
            text-music score (clips without one have none), or one prompt for all.
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
        VidMusicianError: A folder is missing, nothing matches (or one video
            has two generated files), a prompt names no video, a Fréchet
            distance would have too few embeddings, or a file cannot be read
            (the message names the file).
    """
    log = log or (lambda line: None)
    embedders = dict(embedders or {})
    if (embedders or kl_metric is not None) and reference is None:
        raise ConfigError("a Fréchet distance or KL divergence needs reference music; pass --reference")
    if prompts and text_embedder is None:
        raise ConfigError("a CLAP text-music score needs a CLAP model; pass text_embedder")
    vids = list_videos(videos)
    # A video is never its own generated music (`generate videos/ -o videos/` puts the music beside it).
    gens = match_audio(list(vids), generated, "generated", log, tag=OUTPUT_TAG, exclude=vids.values())
    if not gens:
        raise ConfigError(
            f"{generated}: no generated file matches a video in {videos} by name; name each one after its "
            f"video (clip.mp4 -> clip.wav or clip{OUTPUT_TAG}.wav, as `vidmusician generate` names it)"
        )
    refs = match_audio(list(gens), reference, "reference", log) if reference is not None else {}
    if reference is not None and not refs:
        raise ConfigError(f"{reference}: no reference file matches a generated file by name; check --reference")
    # A video without a soundtrack in a reference folder of videos (`--reference videos/`) is no
    # reference music: its clip is scored without one, as a clip with no reference file is.
    silent = without_audio(refs)
    refs = {n: p for n, p in refs.items() if n not in silent}
    if reference is not None and not refs:
        raise ConfigError(f"{reference}: no reference file has an audio stream ({', '.join(map(printable, silent))}); "
                          f"pass a folder of reference music or of videos with their soundtracks, or leave out "
                          f"--reference")
    unmatched = {"no_generated": sorted(set(vids) - set(gens))}
    if reference is not None:
        unmatched["no_reference"] = sorted(set(gens) - set(refs) - set(silent))
        unmatched["no_reference_audio"] = silent
    what = {"no_generated": "skipped, no generated file", "no_reference": "no reference file, scored without one",
            "no_reference_audio": "with a reference file that has no audio stream, scored without one"}
    for key, names in unmatched.items():
        if names:
            log(f"warning: {len(names)} video(s) {what[key]}: {', '.join(map(printable, names))}")

    pairs = [(gens[n], refs[n]) for n in sorted(gens) if n in refs]
    for name, embedder in embedders.items():  # a distance that cannot be had: said before the clips' work
        check_embedding_counts(name, embedder, [g for g, _ in pairs], [r for _, r in pairs])
    if prompts and not isinstance(prompts, str):
        prompts = prompts_by_clip(prompts, vids, gens, videos, log)  # said before the work
    encoder_source, activation = "given", None
    if settings.source == "change" and (encoder is None or isinstance(encoder, str)):
        # The encoder the music was made with, and its activation, as `generate` built it.
        encoder, activation, encoder_source = encoder_of(gens.values(), log, encoder)
    encoder = _load_encoder(encoder, activation, encoder_source) if settings.source == "change" else None
    clips = []
    for name in sorted(gens):
        # The report, the log and --prompts name a clip as text (a file name's bytes that are
        # not UTF-8 as \xNN); its plot is named after the video's own bytes.
        clip = evaluate_clip(printable(name), vids[name], gens[name], refs.get(name), encoder, settings,
                             feature_cache)
        log(f"{clip.name}: " + ", ".join(f"{k}={format_score(clip.scores[k])}" for k in METRICS if k != "clap_text"))
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
        try:
            fd[name] = frechet.frechet_audio_distance(gen, ref, rate, embedder)
        except ConfigError as exc:
            raise ConfigError(f"frechet_distance[{name}]: {exc}{_per_unit(embedder)}") from None
        log(f"frechet_distance[{name}]: {format_score(fd[name])}")
    kl = None
    if kl_metric is not None:
        from .audio_kl import passt_kl_divergence  # audiocraft's metrics and PaSST: only when asked for

        kl = passt_kl_divergence([c.generated for c in paired], [c.reference for c in paired], kl_metric)
    means = metrics.mean_scores([c.scores for c in clips], METRICS)
    used = None if encoder is None else {"spec": encoder.name, "activation": encoder.activation,
                                         "source": encoder_source}
    return EvalReport(clips, means, fd, unmatched, settings, kl, used)


def check_embedding_counts(name: str, embedder: frechet.Embedder, generated: list[Path],
                           reference: list[Path]) -> None:
    """Refuses, before any clip is scored, a Fréchet distance whose sets give too few embeddings.

    Known from the audio's lengths alone for an embedder with an ``embedding_count``
    method (CLAP: one embedding per 10 s window); others are checked when they embed.

    Raises:
        ConfigError: The generated or the reference files give fewer than 2 embeddings.
    """
    count = getattr(embedder, "embedding_count", None)
    if count is None:
        return
    rate = int(getattr(embedder, "sample_rate", 32000))
    totals = {}
    for role, files in (("generated", generated), ("reference", reference)):
        totals[role] = 0
        for path in files:
            totals[role] += count(len(load_audio(path, rate)))
            if totals[role] >= 2:  # enough: the other files need not be read
                break
    short = frechet.too_few_embeddings(totals)
    if short:
        raise ConfigError(f"frechet_distance[{name}]: {short}{_per_unit(embedder)}")


def _per_unit(embedder: Any) -> str:
    unit = getattr(embedder, "unit", None)
    return f" (one embedding per {unit})" if unit else ""


def prompts_by_clip(prompts: Mapping[str, str], videos: Mapping[str, Path], generated: Mapping[str, Path],
                    folder: str | Path = "", log: Callable[[str], None] | None = None) -> dict[str, str]:
    """Each clip's prompt, by clip name, from prompts keyed by the name of a clip's video.

    A key is the video's stem or file name (``clip`` or ``clip.mp4`` for
    ``videos/clip.mp4``), or the generated file's name (``clip_music.wav``).

    Args:
        prompts: ``{key: prompt}`` (a :class:`~vidmusician.evaluation.embedders.Prompts`
            read from a file names that file in messages).
        videos: The videos, by stem.
        generated: The generated files, by their video's stem.
        folder: The videos' folder, for messages.
        log: Receives a warning line naming the keys that name no video here (one
            prompts file for a whole test set, scored a folder at a time).

    Raises:
        ConfigError: No key names a video here (the file is keyed some other way), or
            two keys name one clip.
    """
    source = f"--prompts {printable(prompts.path)}" if hasattr(prompts, "path") else "prompts"
    clip_of = {}
    for stem, video in videos.items():
        for name in (stem, video.name, generated[stem].name if stem in generated else None):
            if name is not None:
                clip_of.setdefault(printable(name), printable(stem))
    unknown = [key for key in prompts if key not in clip_of]
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        names = f"{shown} name{'s' if len(unknown) == 1 else ''} no video in {printable(folder)}"
        if len(unknown) == len(prompts):
            raise ConfigError(f"{source}: {names}; prompts are keyed by the video's name "
                              f"(clip or clip.mp4 for videos/clip.mp4)")
        if log is not None:
            log(f"warning: {source}: {names}; left out")
    out, key_of = {}, {}
    for key, text in prompts.items():
        if key not in clip_of:
            continue
        clip = clip_of[key]
        if clip in out:
            raise ConfigError(f"{source}: {key_of[clip]!r} and {key!r} both name the clip {clip}; keep one of them")
        out[clip], key_of[clip] = text, key
    return out


def encoder_of(generated: Iterable[Path], log: Callable[[str], None],
               spec: str | None = None) -> tuple[str | None, str | None, str]:
    """The visual encoder the generated music was made with, from the tags `generate` writes.

    The activation comes with the spec: an adapter written before the activation was
    recorded was trained on GELU features of ``ViT-B-32:openai`` (trained with
    QuickGELU), and `generate` builds the encoder as the adapter expects; the visual
    beats must come from the same features.

    Args:
        generated: The generated files.
        log: Told when the files disagree on the encoder.
        spec: The spec the caller chose (``--encoder``), or None to take the files'.
            A chosen spec takes the activation of the files made with it.

    Returns:
        ``(spec, activation, source)``: the recorded spec and activation when every
        tagged file agrees (``"recorded in the generated files"``); with ``spec``
        given, that spec and the activation of its files, if any; else
        ``(None, None, "default")``, which loads ``ViT-B-32:openai``. An activation
        of None is the weights' own.

    Raises:
        ConfigError: The files made with one spec record different activations (one
            encoder scores a run).
    """
    recorded: dict[tuple[str, str | None], list[Path]] = {}
    for path in generated:
        tags = read_tags(path)
        made_with = tags.get("encoder")
        if made_with is not None and spec in (None, made_with):
            # Untagged activation (older outputs): the weights' own, as `generate` built it then.
            activation = tags.get("encoder_activation") or natural_activation(made_with)
            recorded.setdefault((made_with, activation), []).append(Path(path))
    specs = sorted({s for s, _ in recorded})
    if len(specs) > 1:
        log(f"warning: the generated files were made with different encoders ({', '.join(specs)}); "
            f"using the default, pass --encoder to choose")
        return None, None, "default"
    if len(recorded) > 1:
        groups = "; ".join(f"{ACTIVATION_NAMES.get(a, a)}: {', '.join(printable(p.name) for p in files)}"
                           for (_, a), files in sorted(recorded.items(), key=lambda kv: str(kv[0][1])))
        raise ConfigError(f"the generated files were made with the visual encoder {specs[0]!r} under different "
                          f"activations ({groups}); evaluate each activation's files in a folder of their own")
    if recorded:
        ((found, activation),) = recorded
        return found, activation, ("given, activation recorded in the generated files" if spec is not None
                                   else "recorded in the generated files")
    return spec, None, "given" if spec is not None else "default"


def _load_encoder(spec: Any, activation: str | None, source: str) -> Any:
    # Loaded here once, not by extract_features once per clip.
    if isinstance(spec, VisualEncoder):
        return spec
    # Weights that cannot be had now are one line at once (load_encoder checks, before any
    # download); it says why this encoder was chosen when the files chose none.
    try:
        return load_encoder(spec, activation=activation)
    except ConfigError as exc:
        if source != "default":
            raise
        raise ConfigError("the generated files record no visual encoder (music made without an adapter), so the "
                          f"default is used (--visual-source flow needs none): {exc}") from None
