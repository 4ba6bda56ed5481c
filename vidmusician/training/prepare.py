"""Dataset preparation: (video, music) pairs -> cached codec codes and visual features.

For each source: decode the music with PyAV (resampled to the codec's rate and
channels), compute the video's features once, cut aligned windows, encode every
window with the frozen compression model once (:mod:`vidmusician.training.sources`),
and write shards (see :mod:`vidmusician.training.shards` for the layout). Bad sources
are skipped and listed in ``errors.jsonl``; a rerun skips every source already done
(or already failed).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbones import check_name, load_codec, missing_folder, recorded_name
from ..checks import number
from ..errors import ConfigError, DataError, VidMusicianError, one_line
from ..progress import progress_bar
from ..runtime import default_device
from ..video.encoders import DEFAULT_ENCODER
from ..video.features import load_encoder
from ..video.frame_batches import CPU_ENCODER_BATCH, GPU_ENCODER_BATCH, video_features
from ..video.reader import FRAME_TOLERANCE
from .codec_identity import codec_identity
from .dataset import DatasetMeta, verify_dataset
from .launch import Terminated, check_stop, first_process, stop_on_sigterm  # noqa: F401 (Terminated: raised through prepare())
from .shards import (ERRORS_NAME, ERRORS_PART, INDEX_KEYS, INDEX_NAME, INDEX_PART, META_NAME, SHARD_DIR, append_jsonl,
                     commit_source, complete_rows, dataset_rows, error_rows, has_torn_tail, index_files, read_jsonl,
                     split_counts, write_jsonl)
# The sources and their windows, importable from here as before they had a module of their own.
from .sources import (MIN_SECONDS, Source, encode_windows, holdout_ids, holdout_order, list_sources,  # noqa: F401
                      load_audio, process_source, slice_features, window_starts)


@dataclass
class PrepareReport:
    """What a :func:`prepare` run did."""

    sources: int = 0
    already_done: int = 0
    prepared: int = 0
    failed: list = field(default_factory=list)
    windows: int = 0
    seconds: dict = field(default_factory=dict)  # time spent per stage: audio, video (decode + encoder), codec, write
    elapsed: float = 0.0  # wall seconds from the first pending source to the last, models loaded
    verified: tuple | None = None  # (shards, windows) read whole by the check of ``verify=True``
    holdout_note: str | None = None  # one line when the dataset has no holdout or a video left it for training
    splits: dict = field(default_factory=dict)  # the whole dataset's (videos, windows) per split, after this run


class Processes:
    """This process's place in a multi-process run (``accelerate launch``, torchrun), or a run of one.

    Args:
        cpu: form the process group on the CPU (gloo) even where CUDA is present.
    """

    def __init__(self, cpu: bool = False):
        self.state = None
        self.rank, self.world, self.device = 0, 1, None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from datetime import timedelta

            from accelerate import PartialState

            # Processes wait at the end for the slowest one, which may be hours behind
            # on a large share: the default 30-minute collective timeout would end the run.
            self.state = PartialState(cpu=cpu or not torch.cuda.is_available(), timeout=timedelta(days=30))
            self.rank, self.world, self.device = self.state.process_index, self.state.num_processes, self.state.device

    def barrier(self) -> None:
        """Waits for every process (a no-op alone)."""
        if self.state is not None:
            self.state.wait_for_everyone()


def merge_parts(out: Path) -> None:
    """Folds the per-process index and error parts into ``index.jsonl`` / ``errors.jsonl``.

    The merged file is written whole under a temporary name and renamed, then the
    parts are removed: a kill in between leaves rows in both, which readers count once.
    """
    for name, part, rows in ((INDEX_NAME, INDEX_PART, dataset_rows), (ERRORS_NAME, ERRORS_PART, error_rows)):
        parts = index_files(out, name, part)[1:]
        if not parts:
            continue
        write_jsonl(out / name, rows(out))  # the parts go next
        for p in parts:
            p.unlink()


def keep_complete_sources(path: Path) -> None:
    """Drops the lines of partly written sources (and a torn last line) from the index file this process appends to.

    A kill mid-append can leave some of a source's lines; the source is redone
    and its lines appended anew, so the old ones must go first.
    """
    rows = read_jsonl(path, INDEX_KEYS)
    done = complete_rows(rows)
    if len(done) != len(rows) or has_torn_tail(path):
        write_jsonl(path, done)  # it replaces synced lines


def keep_a_training_window(out: Path, fraction: float) -> str | None:
    """Moves a video from the holdout to training when the holdout holds every window.

    The holdout is chosen among the listed videos before any is read, and always
    leaves one to training; when those fail (no audio, too short) it would hold every
    window and training none. The video moved is the one the holdout took last (the
    one a smaller holdout would not take).

    Returns:
        one line for the report when the dataset ends without a holdout (``fraction`` > 0)
        or a video moved; else None.
    """
    rows = dataset_rows(out)
    held = {r["source"] for r in rows if r["split"] == "holdout"}
    moved = None
    if held and all(r["split"] == "holdout" for r in rows):
        moved = max(held, key=holdout_order)
        held.discard(moved)
        write_jsonl(out / INDEX_NAME, [dict(r, split="train") if r["source"] == moved else r for r in rows])
    if moved is not None:
        return (f"{'no holdout' if not held else 'holdout'}: {moved} was moved to training, where no other video "
                f"has a window" + ("" if held else " (training runs without a holdout loss)"))
    if fraction > 0 and rows and not held:
        videos = len({r["source"] for r in rows})
        why = ("one video with windows, and the holdout takes whole videos and leaves one to training" if videos == 1
               else f"none of the {videos} videos with windows was chosen for it (the ones chosen failed)")
        return f"no holdout: {why}; training runs without a holdout loss"
    return None


# The settings of a new dataset that the call leaves out; a rerun's are the dataset's own (dataset.json).
DEFAULTS = dict(backbone="facebook/musicgen-small", encoder=DEFAULT_ENCODER, window=30.0, hop=30.0, holdout=0.05,
                global_fps=1.0, local_fps=25.0)


def prepare(src, out, backbone: str | None = None, encoder: str | None = None, window: float | None = None,
            hop: float | None = None, holdout: float | None = None, global_fps: float | None = None,
            local_fps: float | None = None, retry_errors: bool = False, device=None, progress: bool = True,
            encoder_batch: int | None = None, per_video_batches: bool = False, verify: bool = False) -> PrepareReport:
    """Prepares a training dataset in ``out`` (see the module docstring).

    Under ``accelerate launch`` / torchrun, each process prepares its share of the
    sources and the report counts that share; process 0 merges the index at the end.
    A setting left out (None) is the dataset's own when ``out`` holds one (a rerun, or
    ``verify`` alone), else :data:`DEFAULTS`; one given must be the dataset's.

    Args:
        src: a folder of music videos, or a CSV/JSONL of ``video, audio, text`` pairs.
        out: dataset folder; a rerun continues where the last run stopped.
        backbone: MusicGen whose codec encodes the music (a name for ``load_codec``: hub
            name, local folder, 'tiny', 'random-SIZE'). A dataset copied from another machine, whose
            backbone folder is not on this one, takes a MusicGen from elsewhere whose codec (its
            fingerprint) is the recorded one, and records it, with a warning.
        encoder: visual encoder spec for :func:`vidmusician.video.features.load_encoder`.
        window, hop: window length and step in seconds.
        holdout: fraction of sources held out for evaluation (whole sources; training always keeps
            one: :func:`keep_a_training_window`).
        global_fps, local_fps: rates of the visual features.
        retry_errors: try again the sources listed in ``errors.jsonl``.
        device: where the codec and encoder run (default: this process's GPU when there is one).
        progress: show a progress bar.
        encoder_batch: frames per visual encoder batch (None: 256 on a GPU, 64 on a CPU); batches span
            videos, so short videos fill them too.
        per_video_batches: encode each video's frames in batches of their own, as before batches
            spanned videos (for comparison; the features are the same).
        verify: then read the whole dataset as training reads it
            (:func:`~vidmusician.training.dataset.verify_dataset`; process 0, after the others are done).

    Raises:
        Terminated: on SIGTERM; every source finished before it is kept.
        DataError: ``verify`` found a damaged shard (named); ``out`` was prepared with other settings, or
            with a backbone folder not on this machine and ``backbone`` is left out or has another codec.
    """
    out = Path(out)
    old = _recorded_meta(out)
    given = dict(backbone=None if backbone is None else recorded_name(backbone), encoder=encoder, window=window, hop=hop, global_fps=global_fps,
                 local_fps=local_fps, holdout=holdout)
    recorded = {k: getattr(old, k, None) for k in given} if old is not None else {}
    asked = {k: v if v is not None else recorded.get(k) if recorded.get(k) is not None else DEFAULTS[k]
             for k, v in given.items()}
    window, hop, holdout, global_fps = asked["window"], asked["hop"], asked["holdout"], asked["global_fps"]
    number("--window", window, low=0, low_open=True)
    number("--hop", hop, low=0, low_open=True)
    if not (isinstance(holdout, (int, float)) and 0 <= holdout < 1):
        raise ConfigError(f"--holdout must be a fraction of the videos in [0, 1), got {holdout!r}")
    if encoder_batch is not None and not (isinstance(encoder_batch, int) and encoder_batch >= 1):
        raise ConfigError(f"--encoder-batch {encoder_batch}: must be a positive number of frames "
                          f"(default {GPU_ENCODER_BATCH} on a GPU, {CPU_ENCODER_BATCH} on a CPU)")
    if abs(hop * global_fps - round(hop * global_fps)) > FRAME_TOLERANCE:
        raise ConfigError(f"--hop {hop} must be a whole number of global frames (1/{global_fps:g} s)")
    sources = list_sources(src)
    if device is not None:
        device = default_device(device)  # a device this machine lacks: one line, before anything is written
    asked = {k: v if k in ("backbone", "encoder") else float(v) for k, v in asked.items()}
    if backbone is not None:
        check_name(asked["backbone"])  # a folder that is not there: the loader's line, before anything loads
    # A dataset copied from another machine, whose backbone folder is not on this one, and another given.
    moved = old is not None and backbone is not None and asked["backbone"] != old.backbone \
        and missing_folder(old.backbone)
    if old is not None:
        # A setting the dataset did not record (prepared before it was) is not compared.
        diffs = [f"{k}: {getattr(old, k)} vs {v}" for k, v in asked.items()
                 if getattr(old, k) not in (None, v) and not (moved and k == "backbone")]
        if diffs:
            raise DataError(f"{out}: prepared with other settings ({'; '.join(diffs)}); leave those options out "
                            f"(a rerun takes the dataset's), or prepare into a new folder")
    if moved:
        _take_moved_backbone(out, old, asked["backbone"])
        old.save(out)  # the folder on this machine: training here finds it without --backbone
    created = _first_missing(out)  # the outermost folder this call makes (None: OUT is there)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _prepare(sources, out, asked, retry_errors, device, progress, encoder_batch, per_video_batches,
                        verify)
    except BaseException:
        if created is not None and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)  # a backbone or encoder that failed to load: no empty folder
        raise


def _recorded_meta(out: Path) -> DatasetMeta | None:
    """The dataset's ``dataset.json`` (None: a new dataset), with a backbone folder recorded as given,
    before folders were recorded by their absolute path, read as :func:`~vidmusician.backbones.recorded_name` records it."""
    if not (out / META_NAME).is_file():
        return None
    meta = DatasetMeta.load(out)
    if meta.backbone is not None:
        meta.backbone = recorded_name(meta.backbone)
    return meta


def _take_moved_backbone(out: Path, old: DatasetMeta, given: str) -> None:
    """Takes ``given`` for the backbone folder the dataset records, which is not on this machine.

    A dataset copied from another machine records that machine's path of the MusicGen folder.
    A MusicGen elsewhere is taken when its codec's fingerprint is the one the dataset recorded:
    the codes stay those that codec makes. Only the codec can be checked (the recorded folder is
    not here), and MusicGen sizes share one: a warning says what the dataset records now, the
    backbone that training takes when ``--backbone`` is left out. ``old.backbone`` becomes ``given``.

    Raises:
        DataError: the dataset recorded no codec (nothing shows ``given``'s is the same), or ``given``'s
            codec is another.
    """
    where = f"{out}: prepared with the backbone folder {old.backbone}, which is not on this machine"
    if old.codec_id is None:
        raise DataError(f"{where}, before datasets recorded their codec, so nothing shows that {given} has the same "
                        f"one; prepare it where that folder is, or prepare into a new folder")
    # On the CPU: a fingerprint is the same on any device, and each process of a launch checks it.
    found = codec_identity(given, load_codec(given, device="cpu"))
    if found != old.codec_id:
        raise DataError(f"{where}, and {given} has another codec ({old.codec_id} vs {found}); pass --backbone with "
                        f"the MusicGen it was prepared with, or prepare into a new folder")
    if first_process():  # every process of a launch checks it; one says it
        warnings.warn(f"{out}: the backbone folder {old.backbone} is not on this machine; the dataset now records "
                      f"{given}, whose codec made its music (training takes it when --backbone is left out)",
                      stacklevel=3)
    old.backbone = given


def _first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist (None: ``path`` exists)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _prepare(sources: list[Source], out: Path, asked: dict, retry_errors: bool, device, progress: bool,
             encoder_batch: int | None, per_video_batches: bool, verify: bool) -> PrepareReport:
    """:func:`prepare` past its checks, into the folder ``out``."""
    holdout = asked["holdout"]
    procs = Processes(cpu=device is not None and device.type == "cpu")
    one = procs.world == 1
    index = out / (INDEX_NAME if one else INDEX_PART.format(rank=procs.rank))
    errors_file = out / (ERRORS_NAME if one else ERRORS_PART.format(rank=procs.rank))
    keep_complete_sources(index)  # only this process writes this file
    if procs.rank == 0:
        # Shards a SIGKILL left half-written under their temporary names: no index line points at them.
        for path in (out / SHARD_DIR).glob(".*.part"):
            path.unlink(missing_ok=True)
        if retry_errors:
            for path in index_files(out, ERRORS_NAME, ERRORS_PART):
                path.unlink(missing_ok=True)
    procs.barrier()  # no process writes a shard or an error before this is done
    finished = {r["source"] for r in dataset_rows(out)} | {e["source"] for e in error_rows(out)}
    held = holdout_ids([s.id for s in sources], holdout)
    mine = sources[procs.rank::procs.world]  # a fixed share: a rerun gives each process the same sources
    pending = [s for s in mine if s.id not in finished]
    report = PrepareReport(sources=len(mine), already_done=len(mine) - len(pending))
    if pending:
        with stop_on_sigterm():
            _prepare_sources(pending, out, index, errors_file, held, report, asked,
                             device if device is not None else procs.device, progress and procs.rank == 0,
                             encoder_batch, not per_video_batches)
    procs.barrier()
    if procs.rank == 0:
        merge_parts(out)
        report.holdout_note = keep_a_training_window(out, holdout)
        report.splits = split_counts(dataset_rows(out))
    procs.barrier()  # no process returns before the dataset is whole
    if verify and procs.rank == 0:  # after the last barrier: the others need not wait for the check
        report.verified = verify_dataset(out)
    return report


def _prepare_sources(pending: list[Source], out: Path, index: Path, errors_file: Path, held: set, report,
                     asked: dict, device, progress: bool, encoder_batch: int | None, across: bool) -> None:
    """Prepares and commits each pending source in turn.

    The next source's audio decodes in a thread meanwhile, and the next videos' frames
    in another (:func:`~vidmusician.video.frame_batches.video_features`).
    """
    old = _recorded_meta(out)
    if old is not None:
        old.backbone_to_load(out)  # its folder not on this machine (no --backbone): one line saying so
    cm = load_codec(asked["backbone"], device=device)  # the codec alone: the LM is not needed to encode
    enc = load_encoder(asked["encoder"], device=device)
    meta = DatasetMeta(sample_rate=int(cm.sample_rate), channels=int(cm.channels), frame_rate=float(cm.frame_rate),
                       n_q=int(cm.num_codebooks), card=int(cm.cardinality), global_dim=int(enc.global_dim),
                       local_dim=int(enc.num_patches), encoder_activation=enc.activation,
                       codec_id=codec_identity(asked["backbone"], cm), **asked)
    if old is not None and old.codec_id is None:
        # Its first sources were prepared before the codec was recorded: which made them is unknown.
        meta.codec_id = None
    if old is not None and old.holdout is None:
        meta.holdout = None  # the same: the holdout its first sources were split with is unknown
    diffs = old.differences(meta) if old is not None else ""
    if diffs:
        raise DataError(f"{out}: prepared with another codec or encoder ({diffs}); use a new folder")
    meta.save(out)  # every process writes the same description (atomically)

    def load(source):
        t = time.perf_counter()
        try:
            return load_audio(source, meta), time.perf_counter() - t
        except VidMusicianError as exc:
            return exc, time.perf_counter() - t

    seconds, start = report.seconds, time.perf_counter()
    bar = progress_bar(pending, unit="video", desc="prepare", enabled=progress)
    features = video_features(enc, [s.video for s in pending], meta.global_fps, meta.local_fps, encoder_batch, across)
    # closing: a SIGTERM or an error stops the frame decoding thread too.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidmusician-audio") as pool, closing(features):
        ahead = pool.submit(load, pending[0])
        for n, source in enumerate(bar):
            check_stop()
            wav, took = ahead.result()
            seconds["audio"] = seconds.get("audio", 0.0) + took
            if n + 1 < len(pending):
                ahead = pool.submit(load, pending[n + 1])
            t = time.perf_counter()
            feats = next(features)  # video decode and encoder: the time this process waits for them
            seconds["video"] = seconds.get("video", 0.0) + time.perf_counter() - t
            try:
                # The video's error first: for a file that is not a video it is the clearest message
                # (its frame reader opens the file once; no separate probe).
                for failed in (feats, wav):
                    if isinstance(failed, VidMusicianError):
                        raise failed
                windows = process_source(source, cm, meta, feats, wav, seconds=seconds)
            except VidMusicianError as exc:
                check_stop()  # a SIGTERM a library turned into this source's error: not the file's
                report.failed.append({"source": source.id, "error": one_line(exc)})
                append_jsonl(errors_file, [report.failed[-1]])
                continue
            t = time.perf_counter()
            split = "holdout" if source.id in held else "train"
            commit_source(out, index, {"source": source.id, "split": split, "text": source.text}, windows)
            seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - t
            report.prepared += 1
            report.windows += len(windows)
            bar.set_postfix(windows=report.windows, errors=len(report.failed))
    report.elapsed = time.perf_counter() - start


if __name__ == "__main__":  # accelerate launch -m vidmusician.training.prepare SRC OUT ...: one worker
    import sys

    from ..cli import main

    if "TORCHELASTIC_RUN_ID" in os.environ:  # stop when the launcher dies (see vidmusician.training.launch)
        from .launch import stop_with_launcher

        stop_with_launcher("vidmusician.training.prepare")
    sys.exit(main(["prepare", *sys.argv[1:]]))
