"""Scoring one uploaded video with models loaded once: the work behind the web page.

:class:`Scorer` loads the backbone, adapter and visual encoder once per process
and turns a video into three files in a job folder of its own: the video with
the music muxed in, the music as WAV, and the alignment plot of ``vidmusician
eval --plot`` (visual beats above the music's onsets) with its beat-alignment
score. Jobs run one at a time on the shared model; a job that fails or is
cancelled removes its folder, so no partial file is ever served.

The CLI's parser reads :data:`DEFAULT_MAX_DURATION` from here, so the library
(torch, audiocraft) is imported inside the methods that use it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, VidMusicianError, printable
from ..fileio import name_room

__all__ = ["DEFAULT_MAX_DURATION", "Cancelled", "LoadedModels", "ScoreRequest", "ScoreResult", "Scorer"]

# Ten minutes of music is already hours of CPU and minutes of GPU: beyond that a
# shared page would be held by one user.
DEFAULT_MAX_DURATION = 600.0

# Seeds drawn for a job that names none: short enough to read off the page and type back.
_SEED_RANGE = 2 ** 31

# A job's files are named after the upload, as the visitor downloads them: "<stem>_music.wav",
# "<stem>_scored.mp4" (or .mkv) and, the longest, "<stem>_alignment.png".
_LONGEST_SUFFIX = len("_alignment.png")
# Enough of the upload's name to recognise it by; a longer one (a 75-character CJK
# title is 225 bytes) is cut, since the writer's hidden name would pass NAME_MAX.
_STEM_BYTES = 120


class Cancelled(Exception):
    """The job was cancelled from the page (not an error: nothing is shown but a note)."""


@dataclass(frozen=True)
class ScoreRequest:
    """What the page asks for; ``None`` fields take the defaults of ``vidmusician generate``.

    A ``seed`` of None draws a random one, which the result records.
    """

    video: str
    text: str | None = None
    duration: float | None = None
    seed: int | None = None
    top_k: int = 250
    temperature: float = 1.0
    text_cfg: float = 3.0
    video_cfg: float = 3.0


@dataclass(frozen=True)
class ScoreResult:
    """One finished job's files (all in ``folder``), its beat-alignment score and the seed it used."""

    folder: Path
    video: Path
    wav: Path
    plot: Path
    beat_alignment: float
    duration: float
    seed: int


@dataclass(frozen=True)
class LoadedModels:
    """What a :class:`Scorer` runs, as the page names it.

    Attributes:
        backbone: the backbone's name ('facebook/musicgen-small', 'tiny', ...).
        adapter: the adapter folder or Hub id; None: fresh adapters (identity at
            init), so the music is the backbone's own.
        stage: the adapter's training stage (None without an adapter).
        encoder: the visual encoder's spec ('ViT-B-32:openai', 'tiny', ...).
        random_backbone: the backbone has random weights (a stand-in: noise, not music).
        random_encoder: the encoder has random weights (its visual beats are not a real model's).
    """

    backbone: str
    adapter: str | None
    stage: int | None
    encoder: str
    random_backbone: bool
    random_encoder: bool


class Scorer:
    """The models of one demo process, and the jobs run on them one at a time.

    Args:
        adapter: adapter folder, or None (untrained adapters: the video only
            sets the length and the plot, the music is the backbone's).
        backbone: as for :func:`vidmusician.generate`.
        encoder: visual encoder spec; default: the adapter's, or ``ViT-B-32:openai``.
        device: 'cuda' or 'cpu'; default: CUDA when available.
        max_duration: longest music (and video, when no duration is given) a
            job may ask for, in seconds.
        workdir: folder for job folders; default: a new temporary one, removed
            by :meth:`close`.
    """

    def __init__(self, adapter=None, backbone=None, encoder=None, device=None,
                 max_duration: float = DEFAULT_MAX_DURATION, workdir=None):
        from ..pipeline import load_models
        from ..testing.random_backbones import has_random_weights
        from ..video.encoders import DEFAULT_ENCODER

        if not max_duration > 0:
            raise ConfigError(f"--max-duration must be a positive number of seconds, got {max_duration}")
        self.max_duration = float(max_duration)
        if adapter is None and encoder is None:
            # The plot needs the visual change signal, so an encoder is always loaded.
            encoder = DEFAULT_ENCODER
        self.vm, self.musicgen = load_models(adapter, backbone, encoder, device)
        if self.vm.encoder is None:  # an adapter without --encoder: its own
            from ..video.encoders import load_encoder

            self.vm.encoder = load_encoder(self.vm.config.encoder, device=self.vm.device)
        self.adapter = adapter
        backbone_name = str(self.musicgen.name)
        self.models = LoadedModels(
            backbone=backbone_name, adapter=None if adapter is None else str(adapter),
            stage=None if adapter is None else self.vm.config.stage, encoder=self.vm.encoder.name,
            random_backbone=has_random_weights(backbone_name),
            random_encoder=_random_encoder(self.vm.encoder.name))
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="vidmusician-demo-") if workdir is None else workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one job at a time on the model
        self._closing = threading.Event()  # set by close(): every job stops at its next step

    def score(self, request: ScoreRequest, cancel: threading.Event | None = None) -> ScoreResult:
        """Generates music for ``request.video``, muxes it, plots and scores the alignment.

        Args:
            request: the video and the settings.
            cancel: set it to stop the job at the next sampling step (or, outside
                generation, before its next stage).

        Returns:
            The :class:`ScoreResult`; its folder is the caller's to :meth:`discard`.

        Raises:
            VidMusicianError: bad video or setting (one line).
            Cancelled: ``cancel`` was set; nothing is left behind.
        """
        from ..audio_io import write_audio
        from ..generation.windows import check_seed
        from ..pipeline import check_duration
        from ..video.reader import probe

        cancel = cancel or threading.Event()

        def stop_if_cancelled(*step):  # also ``on_step``: after every sampling step
            if cancel.is_set() or self._closing.is_set():
                raise Cancelled()

        stop_if_cancelled()

        duration = check_duration(request.duration)
        # Drawn here rather than left unseeded, so the page can show it and a visitor can repeat the music.
        seed = secrets.randbelow(_SEED_RANGE) if request.seed is None else check_seed(request.seed)
        info = probe(request.video)  # a bad file fails here, before any work
        # The whole video is read whatever the duration asked for: both count against the limit.
        for what, length in (("the video is", info.duration), ("the duration asked for is", duration)):
            if length is not None and length > self.max_duration:
                raise ConfigError(f"{Path(request.video).name}: {what} {length:.1f} s, longer than this page's "
                                  f"limit of {self.max_duration:g} s; use a shorter clip or duration")
        folder = self.workdir / uuid.uuid4().hex  # 32 hex digits: the page leaves them out of messages
        folder.mkdir()
        try:
            with self._lock:
                stop_if_cancelled()
                features = self._features(request.video, folder)
                stop_if_cancelled()
                self.vm.set_generation_params(top_k=request.top_k, temperature=request.temperature,
                                              text_cfg_coef=request.text_cfg, video_cfg_coef=request.video_cfg)
                # A step callback rather than a hook on the LM: generation runs in a worker
                # thread that cannot be killed, and forward hooks would keep it off the fast engine.
                wav = self.vm.generate([features], [request.text or None], duration=length, seed=seed,
                                       progress=True, on_step=stop_if_cancelled)[0]
            stop_if_cancelled()
            stem = _job_stem(request.video, folder)
            wav_path = write_audio(folder / f"{stem}_music.wav", wav, self.vm.sample_rate)
            video_path = self._mux(request.video, wav, folder / f"{stem}_scored.mp4")
            score, plot = self._plot(request.video, wav_path, folder, stem)
            stop_if_cancelled()
            return ScoreResult(folder, video_path, wav_path, plot, score, wav.shape[-1] / self.vm.sample_rate, seed)
        except BaseException:
            self.discard(folder)
            raise

    def discard(self, folder) -> None:
        """Removes a job folder (once the page has served its files)."""
        folder = Path(folder)
        if folder.parent == self.workdir:  # never anything outside the demo's own folder
            shutil.rmtree(folder, ignore_errors=True)

    def close(self, timeout: float = 60.0) -> None:
        """Stops the running job at its next step (waiting up to ``timeout`` seconds for it to let
        go of the model), refuses new ones, and removes the work folder when this scorer made it.

        A server that stops (Ctrl+C, SIGTERM) thus leaves no generation running in a worker
        thread past its own end.
        """
        self._closing.set()
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- steps ---------------------------------------------------------------

    def _features(self, video, folder: Path):
        from ..video.features import extract_features

        c = self.vm.config
        # Cached in the job folder: the plot's visual rhythm reads the same features
        # back instead of running the encoder over the video a second time.
        return extract_features(video, self.vm.encoder, global_fps=c.global_fps, local_fps=c.local_fps,
                                cache_dir=folder / "features", progress=True)

    def _mux(self, video, wav, path: Path) -> Path:
        from ..muxing import mux_audio

        try:
            return mux_audio(video, wav, self.vm.sample_rate, path)
        except VidMusicianError:
            # A stream mp4 cannot hold (VP8/VP9 from a .webm): mkv, which the browser may not play.
            return mux_audio(video, wav, self.vm.sample_rate, path.with_suffix(".mkv"))

    def _plot(self, video, wav_path: Path, folder: Path, stem: str) -> tuple[float, Path]:
        from ..evaluation.evaluate import EvalSettings, evaluate_clip
        from ..evaluation.plots import plot_clip

        # What `vidmusician eval --plot` draws and scores, with the adapter's encoder and rate.
        settings = EvalSettings(local_fps=self.vm.config.local_fps)
        clip = evaluate_clip(printable(stem), Path(video), wav_path, None, self.vm.encoder, settings, folder / "features")
        plot = plot_clip(clip, folder / f"{stem}_alignment.png")
        return clip.scores["beat_alignment"], plot


def _job_stem(video, folder: Path) -> str:
    """The upload's name without its suffix, cut so that every file the job writes in ``folder`` fits.

    The start of the name is kept (the visitor downloads the files under it), cut
    between characters: a UTF-8 name stays valid UTF-8.
    """
    stem = Path(video).stem or "video"
    budget = min(_STEM_BYTES, name_room(folder) - _LONGEST_SUFFIX)
    raw = os.fsencode(stem)  # the bytes on disk (a name may not be UTF-8)
    if len(raw) <= budget:
        return stem
    cut = budget
    while cut > 0 and raw[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: inside a character
        cut -= 1
    return os.fsdecode(raw[:cut]) or "video"


def _random_encoder(spec: str) -> bool:
    """Whether `load_encoder` builds ``spec`` with random weights: 'tiny', or a model name with no weights."""
    from ..video.encoder_specs import TINY_SPEC, resolve_encoder

    if spec == TINY_SPEC:
        return True
    plan = resolve_encoder(spec)
    return plan.pretrained is None and not plan.model_name.startswith(("local-dir:", "hf-hub:"))
