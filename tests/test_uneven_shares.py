"""Multi-process commands where one process has nothing to do: they finish, they never wait forever.

Two processes over gloo on the CPU, as ``accelerate launch --multi_gpu --num_processes 2``
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


def launch(module: str, *args, port_offset: int = 0) -> subprocess.CompletedProcess:
    """``module`` in two processes; one thread each (the CI machine has two cores)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(32500 + (os.getpid() + port_offset) % 1000), "-m", module]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(launcher + [str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def video(path: Path, seed: int) -> Path:
    noise = np.random.default_rng(seed).uniform(-0.8, 0.8, 3 * 32000).astype(np.float32)
    return flash_video(path, [0.5 + 0.1 * seed], 3.0, size=32, audio=noise)


def test_prepare_with_one_video_then_one_new_video(tmp_path):
    """1 video for 2 processes: process 1 has none. Then a second video: process 0's is done, process 1's is new."""
    src, out = tmp_path / "src", tmp_path / "ds"
    src.mkdir()
    video(src / "v0.mp4", 0)
    settings = ["--backbone", "tiny", "--encoder", "tiny", "--window", "1", "--hop", "1", "--device", "cpu"]
    proc = launch("vidmusician.training.prepare", src, out, *settings)
    assert "1 sources: 0 already done, 1 prepared" in proc.stdout and "0 sources:" in proc.stdout, proc.stdout
    video(src / "v1.mp4", 1)
    proc = launch("vidmusician.training.prepare", src, out, *settings, port_offset=1)
    assert "1 sources: 1 already done, 0 prepared" in proc.stdout, proc.stdout
    assert "1 sources: 0 already done, 1 prepared" in proc.stdout, proc.stdout
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted({r["source"] for r in rows}) == ["v0.mp4", "v1.mp4"] and len(rows) == 6


def test_training_where_one_process_has_no_holdout_window(tmp_path):
    """One holdout window: process 1 evaluates none (and samples none) while process 0 does both."""
    from test_damage import CARD, window

    from vidmusician.training.dataset import DatasetMeta, ShardWriter

    data = tmp_path / "data"
    data.mkdir()
    DatasetMeta("tiny", 32000, 1, 50.0, 4, CARD, "tiny", 32, 16, 1.0, 25.0, 2.0, 2.0).save(data)
    writer = ShardWriter(data, shard_windows=2)
    for i in range(5):
        writer.add({"source": f"v{i}", "split": "train" if i < 4 else "holdout", "text": None}, [window(i)])
    writer.flush()
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stage": 1, "batch_size": 1, "max_steps": 2, "warmup_steps": 1, "num_workers": 0,
                                  "eval_every": 1, "save_every": 1, "gradient_checkpointing": False,
                                  "adapter": {"memory_dim": 32, "attn_dim": 16, "attn_heads": 2}}))
    run = tmp_path / "run"
    launch("vidmusician.training.train", "--recipe", recipe, "--data", data, "--output", run, "--backbone", "tiny",
           port_offset=2)
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert sum("holdout_loss" in r for r in logged) == 2 and (run / "adapter" / "adapter_model.safetensors").is_file()
