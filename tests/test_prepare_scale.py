"""`prepare` at scale: several processes give the same dataset as one; kills lose no finished source."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from media import flash_video

import vidmusician.video.frame_batches as frame_batches
from vidmusician.errors import ConfigError, VideoError
from vidmusician.training.dataset import (INDEX_NAME, SHARD_DIR, PreparedDataset, dataset_rows, error_rows, read_jsonl,
                                          shard_name)
from vidmusician.training.prepare import merge_parts, prepare
from vidmusician.video.features import extract_features, load_encoder
from vidmusician.video.frame_batches import CrossVideoBatcher, default_encoder_batch

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--backbone", "tiny", "--encoder", "tiny", "--window", "2", "--hop", "1", "--holdout", "0.3",
            "--device", "cpu"]
DURATIONS = [3.0, 4.0, 3.0, 3.5, 4.0, 3.0]  # two windows or more each: a kill can split a source


def env() -> dict:
    # One thread per process: the same arithmetic (so the same bytes) in every run, and two cores in CI.
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def prepare_cmd(src: Path, out: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    return (launcher or [sys.executable, "-m", "vidmusician", "prepare"]) + [str(src), str(out), *SETTINGS, *extra]


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def content(root: Path) -> tuple[list[str], dict[str, str], list[str]]:
    """What a dataset holds, order aside: its index lines, its shards' bytes (hashed), its bad sources."""
    rows = sorted(json.dumps(r, sort_keys=True) for r in dataset_rows(root))
    shards = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in (root / SHARD_DIR).glob("*.safetensors")}
    errors = [e["source"] for e in error_rows(root)]
    return rows, shards, errors


def inodes(root: Path) -> dict[str, int]:
    """Shard inode of each complete source: a source redone gets a new shard file (a new inode)."""
    return {r["source"]: (root / SHARD_DIR / r["shard"]).stat().st_ino for r in dataset_rows(root)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Six music videos and two bad files (one without audio, one not a video)."""
    src = tmp_path_factory.mktemp("videos")
    for i, duration in enumerate(DURATIONS):
        noise = np.random.default_rng(i).uniform(-0.8, 0.8, int(duration * 32000)).astype(np.float32)
        flash_video(src / f"v{i}.mp4", [0.5 + 0.1 * i], duration, audio=noise)
    flash_video(src / "silent.mp4", [0.5], 2.0)
    (src / "broken.mp4").write_bytes(b"not a video")
    return src


def prepare_here(folder: Path, out: Path, **kwargs) -> None:
    """``prepare`` in this process, on one thread as the subprocesses run (OMP_NUM_THREADS=1): the same bytes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare(folder, out, backbone="tiny", encoder="tiny", window=2, hop=1, holdout=0.3, device="cpu",
                progress=False, **kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight(folder, tmp_path_factory) -> Path:
    """The dataset of one uninterrupted process (batches of 256 frames, about three videos, as on a GPU)."""
    out = tmp_path_factory.mktemp("straight") / "ds"
    prepare_here(folder, out, encoder_batch=256)
    return out


def test_two_processes_give_the_dataset_of_one(folder, straight, tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(31500 + os.getpid() % 1000), "-m", "vidmusician.training.prepare"]
    out = tmp_path / "ds"
    proc = ok(run(prepare_cmd(folder, out, launcher=launcher)))
    assert proc.stdout.count("4 sources:") == 2, proc.stdout  # each process reports its share: 8 = 4 + 4
    rows, shards, errors = content(out)
    assert (rows, shards) == content(straight)[:2] and len(shards) == len(DURATIONS)
    # Bad files of both processes in one errors.jsonl, each once; no per-process parts left.
    assert sorted(errors) == ["broken.mp4", "silent.mp4"]
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "errors.jsonl", INDEX_NAME, SHARD_DIR]
    # The same windows in the same order for training, however the index lines were written.
    assert [r["shard"] + r["key"] for r in PreparedDataset(out).rows] == \
        [r["shard"] + r["key"] for r in PreparedDataset(straight).rows]


# Hooks that kill a `prepare` run at a chosen point (KILL_IN, KILL_AT, KILL_WITH) and log the work it does
# (WORK_LOG), installed in each round's process before the command runs.
KILLER = """
import os, random, signal, sys
import vidmusician.training.prepare as prepare
import vidmusician.training.shards as shards
import vidmusician.training.sources as sources
import vidmusician.video.frame_batches as frame_batches

rng = random.Random(int(os.environ["KILL_SEED"]))
kill_in, kill_at = os.environ["KILL_IN"], int(os.environ["KILL_AT"])
calls = 0

def hook(what):  # the kill_at-th call of the kill_in kind
    global calls
    calls += what == kill_in
    return what == kill_in and calls == kill_at

def die():  # SIGTERM (what schedulers send) or SIGKILL, at this point
    os.kill(os.getpid(), getattr(signal, os.environ["KILL_WITH"]))

def wrap(module, name, before=None, after=None):
    real = getattr(module, name)
    def wrapped(*args, **kwargs):
        if before:
            before(*args)
        out = real(*args, **kwargs)
        if after:
            after(*args)
        return out
    setattr(module, name, wrapped)

def log_work(source, *rest):  # every source that reaches the encoders: the work done
    with open(os.environ["WORK_LOG"], "a") as f:
        f.write(source.id + "\\n")

def encoding(*args):  # during encoding: the codes are computed, not yet written
    if hook("encode"):
        die()

real_atomic_write = shards.atomic_write
def atomic_write(path, write, **kw):  # during a shard write: half the file is there, not yet renamed
    if "shards" not in str(path) or not hook("shard"):
        return real_atomic_write(path, write, **kw)
    def half(tmp):
        write(tmp)
        with open(tmp, "r+b") as f:
            f.truncate(os.path.getsize(tmp) // 2)
        die()
    return real_atomic_write(path, half)

real_append = shards.append_jsonl
def append(path, rows):  # during the index append: some lines, the last one torn
    if hook("index"):
        text = "".join(__import__("json").dumps(r, sort_keys=True) + "\\n" for r in rows)
        with open(path, "a") as f:  # at least the first line whole: a partly indexed source
            f.write(text[:rng.randrange(text.index("\\n") + 1, len(text))])
        die()
    real_append(path, rows)

class LoggedBuilder(frame_batches.FeatureBuilder):  # every video that reaches the visual encoder: work too
    def __init__(self, reader, *rest):
        with open(os.environ["WORK_LOG"], "a") as f:
            f.write(reader.path.name + "\\n")
        super().__init__(reader, *rest)

wrap(prepare, "process_source", before=log_work)
frame_batches.FeatureBuilder = LoggedBuilder
wrap(sources, "encode_windows", after=encoding)
shards.atomic_write = atomic_write
shards.append_jsonl = append
"""

# Starts each round's process: a fork of one that has already imported what `prepare` imports (most of a
# short run's time in a fresh interpreter). The round's process gets its own environment, stdout and
# stderr, installs the hooks above, runs `vidmusician prepare` and exits; its exit status comes back.
FORK_SERVER = """
import json, os, sys
from vidmusician.cli import main
import vidmusician.training.prepare, audiocraft.models, open_clip, decord, av  # noqa: F401 (imported once)

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.update(job["env"])
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), {"__name__": "killer"})
        sys.exit(main(["prepare"] + job["args"]))
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class ForkServer:
    """Runs ``vidmusician prepare`` with the hooks of ``hooks`` (a file) in a new process per call."""

    def __init__(self, hooks: Path, folder: Path):
        self.folder = folder
        script = folder / "fork_server.py"
        script.write_text(FORK_SERVER)
        self.proc = subprocess.Popen([sys.executable, str(script), str(hooks)], cwd=REPO, env=env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, args: list[str], extra_env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
        out, err = self.folder / "stdout.txt", self.folder / "stderr.txt"
        job = dict(args=args, env=extra_env, stdout=str(out), stderr=str(err))
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        assert select.select([self.proc.stdout], [], [], timeout)[0], f"prepare ran past {timeout} s"
        status = self.proc.stdout.readline()
        assert status, f"the fork server stopped (exit {self.proc.wait()}); see the captured stderr"
        return subprocess.CompletedProcess(args, int(status), out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_kills_at_random_points_redo_no_finished_source(folder, straight, tmp_path):
    """SIGTERM during encoding, SIGKILL during an index append and during a shard write (random calls, random
    cuts), then a run to the end."""
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    out, work = tmp_path / "ds", tmp_path / "work.txt"
    rng = random.Random(0)
    rounds = [("SIGTERM", "encode"), ("SIGKILL", "index"), ("SIGKILL", "shard"), (None, "none")]
    server = ForkServer(killer, tmp_path)
    try:
        for round_, (signame, where) in enumerate(rounds):
            before = inodes(out) if out.exists() else {}
            work.write_text("")
            points = dict(KILL_IN=where, KILL_AT=str(rng.randint(2, 3)), KILL_WITH=signame or "SIGKILL",
                          KILL_SEED=str(round_), WORK_LOG=str(work))
            proc = server.run(prepare_cmd(folder, out)[4:], points)
            expected = {"SIGTERM": 143, "SIGKILL": -signal.SIGKILL, None: 0}[signame]
            assert proc.returncode == expected, proc.stderr[-2000:]
            if signame == "SIGTERM":  # one line, no traceback
                assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
                assert proc.stderr.strip().splitlines()[-1].startswith("vidmusician prepare: stopped by SIGTERM")
            redone = set(work.read_text().split()) & set(before)
            assert not redone, f"round {round_}: finished sources redone: {redone}"
            after = inodes(out)
            assert all(after[s] == ino for s, ino in before.items())  # finished shards never rewritten
            PreparedDataset(out)  # what a kill leaves always reads (only complete sources)
            if where == "index":  # the kill left a partly indexed source: it does not count as finished
                assert len(dataset_rows(out)) < len(read_jsonl(out / INDEX_NAME))
            # SIGTERM removes the shard it was writing; what a SIGKILL leaves, the next run removes
            assert not list((out / SHARD_DIR).glob(".*.part")) or signame == "SIGKILL"
    finally:
        server.close()
    assert len(before) >= 3  # the kills left finished sources to keep
    assert re.search(r"seconds: audio [\d.]+, video [\d.]+, codec [\d.]+, write [\d.]+", proc.stdout), proc.stdout
    assert content(out) == content(straight)


def test_a_merge_cut_short_reads_the_same_and_a_rerun_completes_it(straight, folder, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(straight, out)
    lines = (out / INDEX_NAME).read_text().splitlines(keepends=True)
    expected = content(out)
    # Killed before the merge's rename: only the parts of two processes.
    (out / "index.part-0.jsonl").write_text("".join(lines[::2]))
    (out / "index.part-1.jsonl").write_text("".join(lines[1::2]))
    (out / INDEX_NAME).unlink()
    errors = (out / "errors.jsonl").read_text().splitlines(keepends=True)
    (out / "errors.part-1.jsonl").write_text("".join(errors))
    (out / "errors.jsonl").write_text(errors[0])
    # a source split over two files is complete in neither: it does not count
    assert len(dataset_rows(out)) < len(lines)
    first = json.loads(lines[0])["windows"]  # the lines of the first source, then the others
    (out / "index.part-0.jsonl").write_text("".join(lines[:first]))
    (out / "index.part-1.jsonl").write_text("".join(lines[first:]))
    assert content(out) == expected
    # Killed after the rename, before the parts were removed: rows in both count once.
    merge_parts(out)
    (out / "index.part-1.jsonl").write_text("".join(lines[first:]))
    assert content(out) == expected
    assert len(PreparedDataset(out, "train")) + len(PreparedDataset(out, "holdout")) == len(lines)
    ok(run(prepare_cmd(folder, out)))  # nothing to redo; folds the leftover part in
    assert content(out) == expected and not list(out.glob("*.part-*"))


def test_encoder_batches_across_videos_give_the_features_of_one_video_at_a_time(folder, straight, tmp_path):
    """Batches of 3 frames, of 256 (``straight``: each spans videos) and batches within each video alone (the former
    path, ``extract_features`` per video) give the same shard bytes."""
    prepare_here(folder, tmp_path / "three", encoder_batch=3)
    prepare_here(folder, tmp_path / "alone", per_video_batches=True, encoder_batch=64)
    assert content(tmp_path / "three") == content(straight) == content(tmp_path / "alone")


class FailingReader(frame_batches.FrameReader):
    """v1.mp4 opens, and its third chunk of frames cannot be decoded."""

    def read(self, indices):
        if self.path.name == "v1.mp4" and indices[0] >= 26:
            raise VideoError(f"{self.path}: cannot decode frames {indices[0]}..{indices[-1]} (planted)")
        return super().read(indices)


def test_a_video_failing_mid_batch_is_listed_once_and_spoils_no_other(folder, straight, tmp_path, monkeypatch):
    # Batches of 50, chunks of 13: v0's 75 frames fill a batch and half the next; v1's first two chunks
    # complete it (one frame left over), its third fails, and v2's frames fill the batch instead.
    monkeypatch.setattr(frame_batches, "FrameReader", FailingReader)
    sizes, real_run = [], CrossVideoBatcher._run

    def run_batch(self, pieces, videos):
        sizes.append(sum(len(chunk) for _, chunk, _ in pieces))
        return real_run(self, pieces, videos)

    monkeypatch.setattr(CrossVideoBatcher, "_run", run_batch)
    out = tmp_path / "ds"
    prepare_here(folder, out, encoder_batch=50)
    assert set(sizes[:-1]) == {50}  # v1's frames left the batch; the next video's filled it
    rows, shards, errors = content(out)
    assert sorted(errors) == ["broken.mp4", "silent.mp4", "v1.mp4"]
    assert "v1.mp4: cannot decode frames 26..38 (planted)" in (out / "errors.jsonl").read_text()
    expected = dict(content(straight)[1])
    del expected[shard_name("v1.mp4")]
    assert shards == expected


@pytest.fixture(scope="module")
def tiny():
    return load_encoder("tiny", device="cpu")


def test_batches_are_full_and_frames_held_stay_under_two_batches(folder, tiny, monkeypatch):
    videos = [folder / f"v{i}.mp4" for i in range(4)] + [folder / "broken.mp4"]
    decoded, sizes = [0], []
    real_read, real_embed = frame_batches.FrameReader.read, tiny.embed

    def read(self, indices):
        decoded[0] += len(indices)
        return real_read(self, indices)

    def embed(images):  # frames decoded and not yet encoded when a batch runs: this batch and those behind it
        assert decoded[0] - sum(sizes) < 2 * 20
        sizes.append(len(images))
        return real_embed(images)

    monkeypatch.setattr(frame_batches.FrameReader, "read", read)
    monkeypatch.setattr(tiny, "embed", embed)
    out = list(CrossVideoBatcher(tiny, videos, 1.0, 25.0, batch=20))
    monkeypatch.undo()
    total = sum(len(f.local_feats) for f in out[:4])  # at 25 frames/s every global frame is a local one
    assert sizes == [20] * (total // 20) + ([total % 20] if total % 20 else [])
    # Batches of 3 take other matmul kernels than the batches of 64 of extract_features: still the same bits.
    small = list(CrossVideoBatcher(tiny, videos[:4], 1.0, 25.0, batch=3))
    for video, feats, other in zip(videos, out, small):
        alone = extract_features(video, tiny)
        for f in (feats, other):
            assert torch.equal(f.global_feats, alone.global_feats) and torch.equal(f.local_feats, alone.local_feats)
    assert isinstance(out[4], VideoError) and len(out) == 5
    with pytest.raises(ConfigError, match="--encoder-batch"):
        CrossVideoBatcher(tiny, videos, 1.0, 25.0, batch=0)


def test_cli_refuses_a_batch_of_no_frames(folder, tmp_path):
    proc = run(prepare_cmd(folder, tmp_path / "ds", "--encoder-batch", "0"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("vidmusician prepare: error: --encoder-batch 0: must be a positive number of "
                                   "frames (default 256 on a GPU, 64 on a CPU)")
    assert [default_encoder_batch(d) for d in ("cpu", "cuda", torch.device("cuda:1"))] == [64, 256, 256]


def test_the_benchmarks_random_encodec_has_the_real_codecs_filters(monkeypatch):
    """load_codec('random-encodec'): the 32 kHz EnCodec's filters (its k-means start, a minute on a CPU, skipped)."""
    from audiocraft.models import builders

    import vidmusician.backbones as backbones
    import vidmusician.random_backbones as random_backbones

    monkeypatch.setattr(random_backbones, "build_codec", lambda cfg, seed: builders.get_compression_model(cfg))
    cm = backbones.load_codec("random-encodec", device="cpu")
    assert (cm.sample_rate, cm.frame_rate, cm.num_codebooks, cm.cardinality) == (32000, 50, 4, 2048)
    assert cm.encoder.dimension == 128 and cm.encoder.n_filters == 64 and cm.encoder.n_residual_layers == 1
    assert [m.num_layers for m in cm.encoder.modules() if isinstance(m, torch.nn.LSTM)] == [2]  # SEANet's LSTM
    assert round(sum(p.numel() for p in cm.parameters()) / 1e6, 1) == 56.9
