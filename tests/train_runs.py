"""The trainer's test bench: a flash dataset whose music only the video can place, recipes, and runs.

The synthetic task: videos flash at random frames; the music's codebook 0 holds
token FLASH on the two codec frames a flash changes (the flash frame and the
next, which the local change signal both marks) and QUIET elsewhere; codebooks
1-3 are random. Only the video can tell where FLASH goes. Features come from
real flash videos through the tiny encoder.

Use from a test module (``tests/`` is on ``sys.path``)::

    from train_runs import flash_data, recipe, train_here  # noqa: F401  (flash_data: a pytest fixture)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from media import flash_video

from vidmusician.random_backbones import TINY_CODEC
from vidmusician.training.dataset import DatasetMeta, ShardWriter
from vidmusician.training.train import main
from vidmusician.video.features import extract_features, load_encoder

REPO = Path(__file__).resolve().parents[1]
FLASH, QUIET = 7, 3
FRAME_RATE = TINY_CODEC["frame_rate"]  # the tiny codec's: 50 Hz, as the real one's
VIDEO_FPS = 25  # flash_video's
STEP = FRAME_RATE // VIDEO_FPS  # codec frames per video frame
SECONDS = 2.0
FRAMES = int(SECONDS * FRAME_RATE)
TINY_ADAPTER = {"memory_dim": 32, "attn_dim": 16, "attn_heads": 2}


def flash_frames(rng: random.Random) -> list[int]:
    """About 3 flashes per second, at least 0.16 s apart, on the video's frames: the codec frames they start at."""
    frames: list[int] = []
    for f in range(2 * STEP, FRAMES - 3 * STEP, STEP):
        if rng.random() < 3 / VIDEO_FPS and (not frames or f - frames[-1] >= 4 * STEP):
            frames.append(f)
    return frames


def marked(frames: list[int]) -> list[int]:
    """The codec frames where the video changes at a flash: the flash's own video frame and the next
    (on, then off), and the frames between them that the resampled signal interpolates."""
    return sorted({f + d for f in frames for d in range(STEP + 1)})


def write_flash_data(root: Path) -> Path:
    """Writes 24 training and 6 holdout flash videos with music codes marking the flashes into ``root``."""
    root.mkdir(parents=True)
    DatasetMeta("tiny", 32000, 1, float(FRAME_RATE), 4, 400, "tiny", 32, 16, 1.0, float(VIDEO_FPS), SECONDS,
                SECONDS).save(root)
    encoder = load_encoder("tiny", device="cpu")
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    writer = ShardWriter(root)
    for i in range(30):
        frames = flash_frames(rng)
        video = flash_video(root / f"v{i}.mp4", [f / FRAME_RATE for f in frames], SECONDS)
        codes = torch.randint(0, 400, (4, FRAMES), generator=g)
        codes[0] = QUIET
        codes[0, marked(frames)] = FLASH
        split = "train" if i < 24 else "holdout"
        writer.add({"source": f"v{i}", "split": split, "text": None},
                   [(0.0, codes, extract_features(video, encoder))])
    writer.flush()
    return root


@pytest.fixture(scope="session")
def flash_data(tmp_path_factory) -> Path:
    """The flash dataset (:func:`write_flash_data`), built once per test process; tests only read it.

    Each module that imports this fixture gets its own copy of it from pytest; the
    marker file makes them share one build (as ``hub.hub_cache`` does).
    """
    folder = tmp_path_factory.getbasetemp() / "flash"
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        write_flash_data(folder / "data")
        (folder / ".complete").touch()
    return folder / "data"


def recipe(tmp_path, **fields) -> Path:
    data = dict(stage=2, trainable=["semantic", "rhythm"], adapter=dict(TINY_ADAPTER, rhythm_rank=None),
                batch_size=2, max_steps=6, lr=0.01, min_lr=0.001, warmup_steps=2, weight_decay=0.0,
                eval_every=1000, save_every=1000, log_every=1, num_workers=0)
    data.update(fields)
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.json"
    path.write_text(json.dumps(data))
    return path


def run(args, launcher=None, timeout=240) -> subprocess.CompletedProcess:
    """Runs the trainer in a fresh process (one thread each: the CI machine has two cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = (launcher or [sys.executable, "-m", "vidmusician.training.train"]) + [str(a) for a in args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train_here(args) -> None:
    """Runs the trainer in this process, on one thread as ``run``'s processes (the same arithmetic), without a
    fresh interpreter's start-up (most of a short run's time). For runs whose process does not matter."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(a) for a in args]) == 0
    finally:
        torch.set_num_threads(threads)


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
