"""Scoring many videos: ``generate_many(videos, output_dir)`` writes one output per video.

The models load once; the videos are sampled in batches of similar length (a batch
generates as long as its longest video); each output is written under a temporary
name and renamed, so a file under an output's name is always complete; an output
that exists is skipped, so a rerun after an interruption finishes the rest. A bad
video is listed with its one-line error and the others are scored. Videos whose
outputs would share a name (``a.mp4`` and ``a.mov``) are listed so too, on every run,
whatever exists; a path that does not exist is a mistake in the command, refused before
any work.

A seed seeds each video on its own, from the seed and the video's file name
(:func:`video_seed`), and each video samples under its own seed
(:class:`~vidmusician.generation.row_seeds.RowSeeds`): a video's music does not
depend on which videos share its batch, or on the batch size.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import ConfigError, VidMusicianError, one_line, printable, short_path
from .progress import progress_bar
from .training.launch import check_stop

__all__ = ["DEFAULT_BATCH_SIZE", "ManyReport", "generate_many", "find_videos", "output_path",
           "group_by_length", "video_seed", "music_tags"]

# Videos sampled together: batching amortizes each step's fixed cost; 8 rows of
# MusicGen-small (x2 for guidance) fit any GPU with room for the model.
DEFAULT_BATCH_SIZE = 8
# An output's name: the video's, then this, then the format's suffix (as `vidmusician generate` names one).
OUTPUT_TAG = "_music"


@dataclass
class ManyReport:
    """What :func:`generate_many` did.

    Attributes:
        scored: outputs written by this call.
        skipped: outputs that existed already (not rewritten).
        failed: ``(video, one-line error)`` of each video that could not be scored.
        replaced_soundtracks: videos whose own audio the video output left out
            (``keep_soundtrack=False``).
        no_soundtrack: videos without audio of their own, whose video output has only the
            music although ``keep_soundtrack`` asked to keep theirs.
        cut_music: videos whose video output holds less music than asked for: a
            ``duration`` longer than the video is cut at its end, and only the video's length
            is generated (an audio output keeps it all).
    """

    scored: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    replaced_soundtracks: list[Path] = field(default_factory=list)
    no_soundtrack: list[Path] = field(default_factory=list)
    cut_music: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """``scored 2, skipped 1, failed 1``."""
        return f"scored {len(self.scored)}, skipped {len(self.skipped)}, failed {len(self.failed)}"

    def failures(self) -> list[str]:
        """One line per failed video: its error, which names the video."""
        return [failure_line(video, error) for video, error in self.failed]


def failure_line(video, error: str) -> str:
    """``VIDEO: error``; the project's errors name the file already: then the error alone."""
    name = short_path(video)
    return error if name in error or printable(Path(video).name) in error else f"{name}: {error}"


def generate_many(videos, output_dir, adapter=None, backbone=None, encoder=None, text: str | None = None,
                  duration: float | None = None, cfg_coef: float = 3.0, top_k: int = 250, temperature: float = 1.0,
                  seed: int | None = None, device=None, progress: bool = True, extend_stride: float | None = None,
                  text_cfg_coef: float | None = None, video_cfg_coef: float | None = None,
                  plausibility: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  output_format: str = "wav", keep_soundtrack: bool = False,
                  log: Callable[[str], None] | None = None, engine: str = "fast",
                  *, on_step: Callable[[int, int], object] | None = None,
                  format_option: str | None = None) -> ManyReport:
    """Generates music for many videos, one output file each, in ``output_dir``.

    ``OUT/NAME_music.wav`` for ``NAME.mp4`` (``output_format`` sets the suffix); an
    output that exists is skipped. Videos whose outputs would share a name
    (``a.mp4`` and ``a.mov``, or two ``a.mp4`` from different folders) fail, listed
    with why, and the others are scored; a video named twice (the same file under
    the same name, by another path or a link) is scored once. The arguments
    :func:`~vidmusician.generate` also takes mean the same here, applied to every video.

    Args:
        videos: video files and folders (a folder: its files ending in
            :data:`vidmusician.video.reader.VIDEO_SUFFIXES`, not its subfolders), or one of them.
        output_dir: the folder of the outputs; made if missing.
        seed: seeds each video with :func:`video_seed` of it and the video's file name:
            a video's music is the same whichever videos share its batch. None: not seeded.
        batch_size: videos sampled together (more: faster on a GPU, more memory).
        output_format: ``wav``/``flac`` (the music) or ``mp4``/``mov``/``mkv`` (the
            video with the music).
        keep_soundtrack: a video output keeps the video's own audio as a second audio
            stream (the music stays the first, default one); otherwise it is left out.
        log: called with a line for each video that fails, as it fails, once with the
            number of outputs skipped, and once, before sampling, with the number of video
            outputs whose music a longer ``duration`` would not fit (see ``cut_music``).
        on_step: called after every sampling step as ``on_step(done, total)``: the
            steps done so far and the steps of the whole run (every batch's windows,
            counted once the models are loaded; a batch that loses a video to a bad
            file may run fewer, its remainder is counted as done when it ends). An
            exception raised in it stops the run at that step and propagates: the
            outputs written before stay.
        format_option: the option the user gave ``output_format`` with (the CLI's
            ``"--format"``): a video's error then offers ``--format mkv``, not ``a .mkv output``.
        adapter, backbone, encoder, text, duration, cfg_coef, top_k, temperature, device,
            progress, extend_stride, text_cfg_coef, video_cfg_coef, plausibility, engine: as
            for :func:`~vidmusician.generate` (``plausibility`` None: its default).

    Returns:
        A :class:`ManyReport`: outputs scored and skipped, videos failed (with why).

    Raises:
        VidMusicianError: a bad argument, adapter, backbone or output folder, or an
            input that does not exist (one line, before any video is scored). A bad
            video does not raise: it is in the report's ``failed``.
    """
    from .audio_io import VIDEO_FORMATS, check_writable
    from .muxing import check_muxable, muxed_duration, write_output
    from .generation.guidance import DEFAULT_PLAUSIBILITY, GenerationParams
    from .generation.windows import check_duration, check_seed, count_steps, decode, features_of, sample_tokens
    from .pipeline import load_for_generation
    from .runtime import generation_device
    from .video.reader import frames_covering, probe

    # Every check that needs no model and no video comes first.
    plausibility = DEFAULT_PLAUSIBILITY if plausibility is None else plausibility
    params = GenerationParams(top_k=top_k, temperature=temperature, cfg_coef=cfg_coef, text_cfg_coef=text_cfg_coef,
                              video_cfg_coef=video_cfg_coef, extend_stride=extend_stride, plausibility=plausibility,
                              engine=engine)
    duration, seed = check_duration(duration), check_seed(seed)
    generation_device(device)  # a device this machine lacks, before any video is read
    if isinstance(seed, list):
        raise ConfigError("seed must be one integer; each video's own seed is derived from it and its name")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    suffix = output_suffix(output_format)
    if keep_soundtrack and suffix not in VIDEO_FORMATS:
        formats = [repr(s[1:]) for s in VIDEO_FORMATS]
        raise ConfigError(f"keep_soundtrack needs a video output, not {output_format!r}: use output_format="
                          f"{', '.join(formats[:-1])} or {formats[-1]}")
    videos = find_videos(videos, suffix)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"{short_path(output_dir)}: is a file; the outputs of many videos go in a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    check_writable(output_dir / f"x{OUTPUT_TAG}{suffix}")  # the folder; each video's own name below
    outputs = {video: output_path(video, output_dir, suffix) for video in videos}

    report = ManyReport()
    say = log or (lambda line: None)

    def failed(video, exc):
        check_stop()  # a SIGTERM a library turned into this video's error: the run stops
        report.failed.append((video, one_line(exc)))
        say(f"failed: {failure_line(video, one_line(exc))}")

    # Which of two videos an existing output came from cannot be told: both fail, on every run.
    shared = shared_outputs(outputs)
    pending = []
    for video in videos:
        if video in shared:
            failed(video, ConfigError(shared[video]))
        elif outputs[video].exists():
            report.skipped.append(outputs[video])
        else:
            pending.append(video)
    if report.skipped:
        say(f"skipped {len(report.skipped)} of {len(videos)} videos: their outputs exist "
            f"(delete them to score the videos again)")

    # A bad video, an output name the file system refuses, or a codec the output format cannot hold
    # fails here, in a second, before the models load.
    lengths, infos = {}, {}
    for video in pending:
        try:
            check_writable(outputs[video])
            infos[video] = probe(video)
            check_muxable(video, outputs[video], keep_soundtrack=keep_soundtrack, format_option=format_option)
            lengths[video] = duration if duration is not None else infos[video].duration
            if suffix in VIDEO_FORMATS and duration is not None:
                # A video output holds the video's length of music: the rest would be sampled to be thrown away.
                lengths[video] = muxed_duration(video, duration)
        except VidMusicianError as exc:
            failed(video, exc)
    pending = [v for v in pending if v in lengths]
    if not pending:
        return report
    cut = {v for v in pending if duration is not None and lengths[v] < duration}
    if cut:
        said = ("--duration", "--format wav") if format_option else ("duration", "output_format 'wav'")
        say(f"note: the music is cut to the video's length in {len(cut)} of {len(pending)} outputs ({said[0]} is "
            f"longer), so only that is generated; an audio output ({said[1]}) keeps all of it")

    vm, musicgen, params = load_for_generation(adapter, backbone, encoder, device, params)
    tags = music_tags(adapter, encoder)
    frame_rate, sample_rate = musicgen.frame_rate, int(musicgen.sample_rate)
    # A row's last frames are sampled beside its next ones (the codebook delays): past its end every
    # row samples this many more, so a video's tokens do not depend on what follows it in its batch.
    lookahead = max(getattr(musicgen.lm.pattern_provider, "delays", [0]))
    groups = group_by_length([lengths[v] for v in pending], batch_size)

    def batch_frames(batch_videos):
        frames = [frames_covering(lengths[v], frame_rate) for v in batch_videos]
        return frames, max(frames) + lookahead

    planned = [count_steps(musicgen, batch_frames([pending[i] for i in g])[1], params) for g in groups]
    steps_total, steps_before, reported = sum(planned), 0, 0

    def batch_step(done, _total):
        nonlocal reported
        reported = steps_before + done
        on_step(reported, steps_total)

    bar = _progress_bar(len(pending), progress)
    try:
        for group, steps in zip(groups, planned):
            rows, features = [], []
            for video in (pending[i] for i in group):
                try:
                    features.append(features_of(vm, video, progress) if vm is not None else None)
                    rows.append(video)
                except VidMusicianError as exc:
                    failed(video, exc)
                    bar.update(1)
            if not rows:
                steps_before += steps
                continue
            frames, total = batch_frames(rows)
            batch = vm.make_batch(features, total) if vm is not None else None
            seeds = None if seed is None else [video_seed(seed, v) for v in rows]
            tokens = sample_tokens(musicgen, [text] * len(rows), total, params, seeds, progress, vm=vm, videos=batch,
                                   on_step=batch_step if on_step is not None else None)
            steps_before += steps
            for i, video in enumerate(rows):
                # Each row decoded on its own, to its own length: the music it gets alone.
                wav = decode(musicgen, tokens[i:i + 1, :, :frames[i]], lengths[video])[0]
                try:
                    write_output(outputs[video], wav, sample_rate, video=video, tags=tags,
                                 keep_soundtrack=keep_soundtrack, format_option=format_option)
                except VidMusicianError as exc:
                    failed(video, exc)
                else:
                    report.scored.append(outputs[video])
                    if suffix in VIDEO_FORMATS and not keep_soundtrack and infos[video].has_audio:
                        report.replaced_soundtracks.append(video)
                    if keep_soundtrack and not infos[video].has_audio:  # (refused above for an audio output)
                        report.no_soundtrack.append(video)
                    if video in cut:
                        report.cut_music.append(video)
                bar.update(1)
    finally:
        bar.close()
    if on_step is not None and reported < steps_total:  # a batch ran short: its videos failed
        on_step(steps_total, steps_total)
    return report


def find_videos(inputs, output_suffix: str = ".wav") -> list[Path]:
    """The videos of ``inputs`` (files and folders), in order, each once.

    Each once: a file named again under the same name (another spelling of its path, a
    symlink or hard link in another folder, a folder that holds it) is dropped; it would
    write the same output with the same seed. Under another name it is another output.

    A folder gives its files ending in :data:`vidmusician.video.reader.VIDEO_SUFFIXES`
    (the suffixes prepare and eval scan for), sorted by name, not hidden ones (a
    writer's temporary files) and not the outputs of other videos found
    (``NAME_music.mp4`` beside ``NAME.mp4``, from an earlier run into the same folder). A file named explicitly is taken whatever its suffix.

    Raises:
        ConfigError: an input does not exist, or a folder holds no video.
    """
    from .video.reader import VIDEO_SUFFIXES

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found, from_folders = [], set()
    for item in map(Path, inputs):
        if item.is_dir():
            names = sorted(p for p in item.iterdir()
                           if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".") and p.is_file())
            if not names:
                raise ConfigError(f"{short_path(item)}: no video in this folder (looked for "
                                  f"{', '.join(VIDEO_SUFFIXES)})")
            found += names
            from_folders.update(names)
        elif item.exists():
            found.append(item)
        else:
            raise ConfigError(f"{short_path(item)}: no such file or folder")
    first = {}
    for video in found:
        first.setdefault(_identity(video), video)
    unique = list(first.values())
    outputs = {output_path(v, v.parent, output_suffix) for v in unique}
    return [v for v in unique if not (v in from_folders and v in outputs)]


def output_path(video, output_dir, suffix: str) -> Path:
    """``output_dir/NAME_music.SUFFIX`` for the video ``NAME.EXT``."""
    return Path(output_dir) / f"{Path(video).stem}{OUTPUT_TAG}{suffix}"


def output_suffix(output_format: str) -> str:
    """``.wav`` for ``wav`` (or ``.wav``); ConfigError for a format no writer has."""
    from .audio_io import AUDIO_FORMATS, VIDEO_FORMATS

    suffix = "." + str(output_format).lower().lstrip(".")
    if suffix not in AUDIO_FORMATS and suffix not in VIDEO_FORMATS:
        known = ", ".join(s[1:] for s in sorted(AUDIO_FORMATS) + sorted(VIDEO_FORMATS))
        raise ConfigError(f"unknown output format {output_format!r}; use one of {known}")
    return suffix


def group_by_length(durations: Sequence[float], batch_size: int) -> list[list[int]]:
    """Indices of the videos in batches of at most ``batch_size``, longest first.

    A batch generates as long as its longest video, so the others' rows run past
    their ends: sorted by length, each batch holds videos of similar length. (Among
    groupings into this many full batches, consecutive runs of the sorted lengths
    generate the fewest frames.) Equal lengths keep their order.
    """
    order = sorted(range(len(durations)), key=lambda i: -durations[i])
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def video_seed(seed: int, video) -> int:
    """The seed of one video of a batch: from ``seed`` and the video's file name alone.

    Its folder and its batch do not enter: the same video scored alone, in another
    batch or from another folder gets the same seed. A non-negative integer below 2**63.
    """
    digest = hashlib.sha256(b"%d:" % seed + os.fsencode(Path(video).name)).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def music_tags(adapter, encoder=None) -> dict | None:
    """What made the music, stored in the output for `vidmusician eval` to find the same
    visual encoder (None: no adapter, no visual encoder shaped the music). ``encoder``: a
    spec, a loaded :class:`~vidmusician.video.encoders.VisualEncoder`, or None (the adapter's)."""
    if not adapter:
        return None
    from .config import CONFIG_NAME, AdapterConfig
    from .hub import resolve_adapter
    from .video.encoder_specs import natural_activation

    if encoder is not None and hasattr(encoder, "activation"):  # a loaded VisualEncoder: what it is
        return {"encoder": encoder.name, "encoder_activation": encoder.activation, "adapter": printable(adapter)}
    config = AdapterConfig.load(resolve_adapter(adapter, files=(CONFIG_NAME,)))  # a Hub id: the cached copy
    encoder = encoder or config.encoder
    activation = config.encoder_activation or natural_activation(encoder)
    return {"encoder": encoder, "encoder_activation": activation, "adapter": printable(adapter)}


def shared_outputs(outputs: dict) -> dict:
    """``{video: why}`` for each video whose output (``outputs[video]``) another video's would be."""
    by_output = {}
    for video, out in outputs.items():
        by_output.setdefault(out, []).append(video)
    shared = {}
    for out, videos in by_output.items():
        for video in videos if len(videos) > 1 else ():
            others = " and ".join(short_path(v) for v in videos if v != video)
            shared[video] = (f"{short_path(video)} and {others} would {'both' if len(videos) == 2 else 'all'} "
                             f"write {short_path(out)}; rename one, or score them into different folders")
    return shared


def _identity(path: Path):
    """The same file under the same name: a video named twice."""
    try:
        stat = path.stat()
    except OSError:
        return path
    return path.name, stat.st_dev, stat.st_ino


def _progress_bar(total: int, enabled: bool):
    return progress_bar(total=total, unit="video", desc="videos", enabled=enabled, dynamic_ncols=True)
