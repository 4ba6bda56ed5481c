"""Training learns what only the video tells: where it flashes (the rhythm path), which scene it shows
(the T5 LoRA semantic path); two processes, or gradient accumulation, give one process's adapter.

The flash task and the helpers that run the trainer are in train_runs.
"""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch
from media import flash_video
from train_runs import (FLASH, FRAME_RATE, FRAMES, QUIET, SECONDS, TINY_ADAPTER, VIDEO_FPS, adapter, flash_frames,
                        log_rows, marked, max_diff, ok, recipe, run, train_here)
from train_runs import flash_data  # noqa: F401  (a pytest fixture)

from vidmusician.training.dataset import DatasetMeta, ShardWriter
from vidmusician.video.features import extract_features, load_encoder


@pytest.fixture(scope="module")
def mixed_data(flash_data, tmp_path_factory):
    """flash_data with every third window cut to half its length: windows of two lengths, as short clips give."""
    from vidmusician.training.dataset import PreparedDataset
    from vidmusician.training.prepare import slice_features

    root = tmp_path_factory.mktemp("mixed") / "data"
    root.mkdir()
    DatasetMeta.load(flash_data).save(root)
    writer = ShardWriter(root)
    for split in ("train", "holdout"):
        dataset = PreparedDataset(flash_data, split)
        for i, (row, ex) in enumerate(zip(dataset.rows, dataset)):
            codes, feats = ex.codes, ex.features
            if i % 3 == 0:
                codes, feats = codes[:, :FRAMES // 2], slice_features(feats, 0.0, SECONDS / 2)
            writer.add({"source": row["source"], "split": split, "text": None}, [(0.0, codes, feats)])
    writer.flush()
    return root


# ---- it learns -------------------------------------------------------------------------------


def test_it_learns_where_the_video_flashes(flash_data, tmp_path):
    out = tmp_path / "run"
    # Gradient checkpointing off: the same gradients (test_adapters), a fifth less time.
    train_here(["--recipe", recipe(tmp_path, batch_size=8, max_steps=80, warmup_steps=5, eval_every=80, log_every=20,
                                   gradient_checkpointing=False),
                "--data", flash_data, "--backbone", "tiny", "--output", out])
    rows = log_rows(out)
    final = [r for r in rows if "holdout_loss" in r][-1]
    # At step 0 both are equal (the adapter is the identity); the video must now help clearly.
    assert final["holdout_loss"] < final["holdout_loss_mismatched_video"] - 0.15, final

    # Greedy tokens for a new video put FLASH where its flashes are, and nowhere else.
    from audiocraft.modules.conditioners import ConditioningAttributes

    from vidmusician.model import VidMusician

    vm = VidMusician.from_pretrained(out / "adapter", backbone="tiny", device="cpu")
    frames = flash_frames(random.Random(123))
    feats = extract_features(flash_video(tmp_path / "new.mp4", [f / FRAME_RATE for f in frames], SECONDS), "tiny",
                             device="cpu")
    with torch.no_grad(), vm.video([feats]):
        tokens = vm.lm.generate(None, [ConditioningAttributes(text={"description": None})], num_samples=1,
                                max_gen_len=FRAMES, use_sampling=False, cfg_coef=3.0)
    got = set((tokens[0, 0] == FLASH).nonzero().flatten().tolist())
    assert len(got ^ set(marked(frames))) <= 2, (sorted(got), marked(frames))


# ---- two processes ---------------------------------------------------------------------------


def test_two_processes_give_the_adapter_of_one(mixed_data, tmp_path):
    """Global batch 4 three ways, on windows of two lengths: 1 process x 2 windows x 2 accumulation
    = 2 processes x 1 x 2 = 1 process x 1 x 4. The loss is the mean over the global batch's tokens."""
    r = recipe(tmp_path, grad_accum=2, max_steps=6, eval_every=3)
    one = tmp_path / "one"
    train_here(["--recipe", r, "--data", mixed_data, "--output", one, "--set", "batch_size=2"])
    two = tmp_path / "two"
    # `vidmusician train --num-processes 2`: accelerate launch, run by the command (gloo on the CPU).
    launcher = [sys.executable, "-m", "vidmusician", "train", "--num-processes", "2"]
    proc = ok(run(["--recipe", r, "--data", mixed_data, "--output", two, "--set", "batch_size=1"], launcher=launcher))
    assert "global batch 4" in proc.stdout and "mixed precision no" in proc.stdout  # two processes of one window
    assert json.loads((two / "run.json").read_text())["processes"] == 2
    accumulated = tmp_path / "accumulated"
    train_here(["--recipe", r, "--data", mixed_data, "--output", accumulated, "--set", "batch_size=1",
                "--set", "grad_accum=4"])
    a, b, c = adapter(one), adapter(two), adapter(accumulated)
    assert max_diff(a, b) < 1e-4 and max_diff(a, c) < 1e-4
    moved = a["video_inputs.rhythm_in.proj.weight"].abs().max().item()  # zero at init
    assert moved > 100 * 1e-4
    losses = [[r["loss"] for r in log_rows(run_dir) if "loss" in r] for run_dir in (one, two, accumulated)]
    assert all(abs(x - y) < 1e-5 for x, y in zip(losses[0], losses[1])) and losses[0] == pytest.approx(losses[2])
    objectives = [[r["objective"] for r in log_rows(run_dir) if "objective" in r] for run_dir in (one, two, accumulated)]
    assert len(objectives[0]) == 6 and objectives[0] == pytest.approx(objectives[1], abs=1e-5)
    assert objectives[0] == pytest.approx(objectives[2])
    holdout = [(x["holdout_loss"], y["holdout_loss"]) for x, y in zip(log_rows(one), log_rows(two)) if "holdout_loss" in x]
    assert len(holdout) == 2 and all(abs(x - y) < 1e-4 for x, y in holdout)


@pytest.mark.numerics
def test_a_window_has_the_same_loss_alone_and_padded_in_a_batch(tiny):
    """The delay pattern's last steps of a short window must not be predicted from padding."""
    import dataclasses

    from conftest import perturb_adapters, random_video_batch, tiny_config

    from vidmusician.model import attach_adapters
    from vidmusician.training.losses import loss_mask
    from vidmusician.training.objective import Objective

    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm)  # the video matters, so a mix-up of rows would show
    objective = Objective(vm)
    codes = torch.randint(0, 400, (2, 4, 60), generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 60, dtype=torch.bool)
    valid[1, 40:] = False  # sample 1 is a 40-frame window padded to 60
    videos = random_video_batch(2, [True, True], num_frames=60)

    def sample(i, frames):
        return dataclasses.replace(videos, global_feats=videos.global_feats[i:i + 1],
                                   global_mask=videos.global_mask[i:i + 1], local=videos.local[i:i + 1, :frames],
                                   present=videos.present[i:i + 1])

    with torch.no_grad():
        padded, counts = objective(codes, valid, videos, [None, None])
        first = objective(codes[:1], valid[:1], sample(0, 60), [None])
        second = objective(codes[1:, :, :40], valid[1:, :40], sample(1, 40), [None])
    torch.testing.assert_close(padded, first[0] + second[0], rtol=1e-5, atol=1e-4)
    assert torch.equal(counts, first[1] + second[1])
    assert counts.tolist() == [100, 98, 96, 94]  # 60 + 40 frames, less each window's own delays
    assert torch.equal(loss_mask(vm.lm, valid).sum(dim=(0, 2)), counts)


# ---- the semantic path alone -----------------------------------------------------------------


@pytest.fixture(scope="module")
def style_data(tmp_path_factory):
    """16 training and 6 holdout 1 s videos, each one scene all along (one of two); the music's
    codebook 0 holds the scene's token throughout. Only the video's content tells which."""
    import numpy as np
    from media import _scene, moving_square, write_video

    root = tmp_path_factory.mktemp("style") / "data"
    root.mkdir()
    seconds = 1.0
    frames, video_frames = int(seconds * FRAME_RATE), int(seconds * VIDEO_FPS)
    DatasetMeta("tiny", 32000, 1, float(FRAME_RATE), 4, 400, "tiny", 32, 16, 1.0, float(VIDEO_FPS), seconds,
                seconds).save(root)
    encoder = load_encoder("tiny", device="cpu")
    g = torch.Generator().manual_seed(0)
    yy, xx = np.mgrid[:64, :64]
    writer = ShardWriter(root)
    for i in range(22):
        scene = i % 2  # holdout alternates, so the mismatched control (window i + 3) has the other scene
        video = moving_square(video_frames, 64)
        square = video != video[:, :1, :1]
        video[:] = _scene(scene, yy, xx)
        video[square] = 200
        path = write_video(root / f"s{i}.mp4", video, VIDEO_FPS)
        codes = torch.randint(0, 400, (4, frames), generator=g)
        codes[0] = (FLASH, QUIET)[scene]
        writer.add({"source": f"s{i}", "split": "train" if i < 16 else "holdout", "text": None},
                   [(0.0, codes, extract_features(path, encoder))])
    writer.flush()
    return root


def test_the_t5_lora_semantic_path_learns_the_video_alone(style_data, tmp_path):
    """Stage 1 only (embedding manager, T5 LoRA, projector, cross-attention) on the tiny-t5
    backbone: what the scene looks like reaches the music only through the T5 path."""
    out = tmp_path / "run"
    adapter = dict(TINY_ADAPTER, rhythm_rank=None, semantic_encoder="t5-lora", lora_rank=4)
    train_here(["--recipe", recipe(tmp_path, stage=1, trainable=["semantic"], adapter=adapter, batch_size=8,
                                   max_steps=30, warmup_steps=5, eval_every=30, log_every=15,
                                   gradient_checkpointing=False),
                "--data", style_data, "--backbone", "tiny-t5", "--output", out])
    final = [r for r in log_rows(out) if "holdout_loss" in r][-1]
    assert final["holdout_loss"] < final["holdout_loss_mismatched_video"] - 0.3, final
