"""Multi-process commands where one process has nothing to do: they finish, they never wait forever.

``prepare`` here; the trainer with a holdout that one process has no window of is in
test_train_resume (its launcher test evaluates at every step on one holdout window).

Processes over gloo on the CPU, as ``accelerate launch --multi_gpu --num_processes N``
starts them. Each run has a timeout: a process waiting for a collective that its peer
never joins (a barrier, a broadcast inside a library) fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from media import flash_video

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 150  # a run takes 10-30 s; a hang is forever


def launch(module: str, *args, processes: int = 2) -> subprocess.CompletedProcess:
    """``module`` in several processes; one thread each (the CI machine has two cores)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(32500 + os.getpid() % 1000), "-m", module]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(launcher + [str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def video(path: Path, seed: int) -> Path:
    noise = np.random.default_rng(seed).uniform(-0.8, 0.8, 3 * 32000).astype(np.float32)
    return flash_video(path, [0.5 + 0.1 * seed], 3.0, size=32, audio=noise)


def test_prepare_where_one_process_has_only_done_videos_and_one_has_none(tmp_path):
    """2 videos for 3 processes: process 0's is done already, process 1's is new, process 2 has none."""
    from vidmusician.cli import main

    src, out = tmp_path / "src", tmp_path / "ds"
    src.mkdir()
    video(src / "v0.mp4", 0)
    settings = ["--backbone", "tiny", "--encoder", "tiny", "--window", "1", "--hop", "1", "--device", "cpu"]
    assert main(["prepare", str(src), str(out), *settings]) == 0  # v0, in this process
    video(src / "v1.mp4", 1)
    proc = launch("vidmusician.training.prepare", src, out, *settings, processes=3)
    assert "1 sources: 1 already done, 0 prepared" in proc.stdout, proc.stdout
    assert "1 sources: 0 already done, 1 prepared" in proc.stdout, proc.stdout
    assert "0 sources: 0 already done, 0 prepared" in proc.stdout, proc.stdout
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted({r["source"] for r in rows}) == ["v0.mp4", "v1.mp4"] and len(rows) == 6
