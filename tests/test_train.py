"""Training: it learns video timing, two processes equal one, a SIGKILLed run resumes exactly, stages chain.

The synthetic task: videos flash at random frames; the music's codebook 0 holds
token FLASH on the two codec frames a flash changes (the flash frame and the
next, which the local change signal both marks) and QUIET elsewhere; codebooks
1-3 are random. Only the video can tell where FLASH goes. Features come from
real flash videos through the tiny encoder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import takes_ctrl_c
from media import flash_video

from vidmusician.random_backbones import TINY_CODEC
from vidmusician.training.dataset import DatasetMeta, ShardWriter
from vidmusician.errors import DataError
from vidmusician.video.features import extract_features, load_encoder
from vidmusician.training.losses import codebook_losses
from vidmusician.training.recipe import Recipe
from vidmusician.training.train import EpochBatches, lr_factor, main
from vidmusician.training.train_state import latest_checkpoint

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


@pytest.fixture(scope="module")
def flash_data(tmp_path_factory):
    """24 training and 6 holdout flash videos with music codes marking the flashes."""
    root = tmp_path_factory.mktemp("flash") / "data"
    root.mkdir()
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


@pytest.fixture(scope="module")
def mixed_data(flash_data, tmp_path_factory):
    """flash_data with every third window cut to 2 s: windows of two lengths, as short clips give."""
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


# ---- resume ----------------------------------------------------------------------------------

KILLER = """
import os, signal, sys
import vidmusician.training.train_state as train_state

real_write = train_state.write_safetensors

def write_safetensors(filename, tensors, metadata=None):
    real_write(filename, tensors, metadata=metadata)
    filename = str(filename)
    if filename.endswith("optimizer.safetensors") and ".tmp-step-00000008" in filename:
        with open(filename, "r+b") as f:  # the kill lands halfway through the write
            f.truncate(os.path.getsize(filename) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

train_state.write_safetensors = write_safetensors
from vidmusician.training.train import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_checkpoint_then_resume_equals_an_uninterrupted_run(flash_data, tmp_path, capsys):
    r = recipe(tmp_path, grad_accum=2, max_steps=12, save_every=4, eval_every=1000)
    args = ["--recipe", r, "--data", flash_data]
    straight = tmp_path / "straight"
    train_here(args + ["--output", straight])

    out = tmp_path / "killed"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    proc = run(args + ["--output", out], launcher=[sys.executable, str(killer)])
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = out / "checkpoints"
    # The half-written checkpoint never became visible: `latest` still names step 4, complete.
    assert latest_checkpoint(out) == ckpts / "step-00000004"
    assert (ckpts / ".tmp-step-00000008" / "optimizer.safetensors").is_file()
    assert not (ckpts / ".tmp-step-00000008" / "trainer_state.json").exists()
    assert not (ckpts / "step-00000008").exists()
    files = sorted(p.name for p in (ckpts / "step-00000004").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    size = sum(p.stat().st_size for p in (ckpts / "step-00000004").iterdir())
    assert size < 1_000_000  # adapter + optimizer state only; the tiny backbone alone is larger in fp32

    assert main([str(a) for a in args] + ["--output", str(out)]) == 2  # checkpoints there: --resume needed
    capsys.readouterr()
    train_here(args + ["--output", out, "--resume"])
    assert "at step 4" in capsys.readouterr().out
    assert not (ckpts / ".tmp-step-00000008").exists()
    assert max_diff(adapter(straight), adapter(out)) < 1e-6
    losses = {r["step"]: r["loss"] for r in log_rows(straight) if "loss" in r}
    again = {r["step"]: r["loss"] for r in log_rows(out) if "loss" in r and r["step"] > 4}
    assert all(abs(losses[s] - v) < 1e-6 for s, v in again.items()) and len(again) == 8
    # The killed run's rows past its checkpoint (steps 5-8) were cut when the resumed run redid them.
    assert [r["step"] for r in log_rows(out) if "loss" in r] == list(range(1, 13))


# ---- stages ----------------------------------------------------------------------------------


def test_stage2_before_stage1_is_one_line_naming_the_recipes_init_adapter_and_the_fix(tmp_path, capsys,
                                                                                     monkeypatch):
    """The shipped stage-2 recipe starts from runs/stage1/adapter: where stage 1 has not written it,
    the line says where that path came from and what to do, before anything loads or is written."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "stage2"
    args = ["--recipe", str(REPO / "recipes" / "stage2_rhythm.json"), "--data", "data", "--output", str(out)]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "vidmusician.training.train: error: runs/stage1/adapter: adapter folder not found (the recipe's "
        "init_adapter); train stage 1 first (its --output's adapter/), or pass --init DIR")
    assert main(args + ["--init", "stage1/run/adapter"]) == 2
    assert "stage1/run/adapter: adapter folder not found (--init)" in capsys.readouterr().err
    assert not out.exists()


def test_shipped_recipes_chain_stage1_into_stage2(flash_data, tmp_path):
    tiny = ["--set", "batch_size=2", "--set", "max_steps=3", "--set", "num_workers=0", "--set", "eval_every=3",
            "--set", "save_every=3", "--set", "warmup_steps=1", "--set", "lr=0.01"]
    stage1 = tmp_path / "stage1"
    adapter_dims = [f"adapter.{k}={v}" for k, v in TINY_ADAPTER.items()]
    assert main(["--recipe", str(REPO / "recipes" / "stage1_semantic.json"), "--data", str(flash_data),
                 "--output", str(stage1), "--backbone", "tiny", *tiny,
                 *[x for d in adapter_dims for x in ("--set", d)]]) == 0
    stage1_config = stage1 / "adapter" / "adapter_config.json"
    config = json.loads(stage1_config.read_text())
    assert config["trained_window"] == SECONDS  # the data's windows, which trained the memory's positions
    # Stage 2 trains no memory position (the semantic group stays frozen): it keeps its init adapter's
    # record (here marked as shorter than the data's windows), and generation still warns past it.
    stage1_config.write_text(json.dumps(dict(config, trained_window=SECONDS / 2)))
    stage2 = tmp_path / "stage2"
    assert main(["--recipe", str(REPO / "recipes" / "stage2_rhythm.json"), "--data", str(flash_data),
                 "--output", str(stage2), "--init", str(stage1 / "adapter"), *tiny]) == 0
    one, two = adapter(stage1), adapter(stage2)
    semantic = [k for k in one if ".semantic." in k or k.startswith("video_inputs.memory")]
    rhythm = [k for k in one if ".rhythm." in k or k.startswith("video_inputs.rhythm_in")]
    assert semantic and rhythm
    assert one["video_inputs.memory.proj.weight"].ne(0).any()
    assert all(one["video_inputs.rhythm_in.proj.weight"].eq(0).flatten())  # stage 1 left rhythm at init
    assert all(torch.equal(one[k], two[k]) for k in semantic)  # stage 2 keeps stage 1's semantic adapter
    assert two["video_inputs.rhythm_in.proj.weight"].ne(0).any()  # and trains the in-attention
    config = json.loads((stage2 / "adapter" / "adapter_config.json").read_text())
    assert config["stage"] == 2 and config["encoder"] == "tiny" and config["trained_window"] == SECONDS / 2


def test_clips_shorter_than_the_window_record_the_longest_window_trained(flash_data, tmp_path):
    """prepare --window longer than every clip gives windows of the clips' length: the adapter records
    those, so generation still warns about the memory positions past them."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(flash_data, data)
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps(dict(meta, window=2 * SECONDS)))
    out = tmp_path / "run"
    train_here(["--recipe", recipe(tmp_path, stage=1, trainable=None, max_steps=1), "--data", data,
                "--backbone", "tiny", "--output", out])
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["trained_window"] == SECONDS  # the clips', not --window's 2 x SECONDS


def test_the_trained_window_is_the_longest_that_trained_the_memory_positions():
    from vidmusician.training.model_setup import trained_window

    assert trained_window(None, 10.0) == 10.0  # a fresh adapter: this run's windows
    assert trained_window(10.0, 30.0) == 30.0  # longer windows train more positions
    assert trained_window(30.0, 10.0) == 30.0  # shorter ones leave the positions past them as trained before
    assert trained_window(10.0, 30.0, trains_memory=False) == 10.0  # stage 2: the memory stays as it was
    assert trained_window(None, 30.0, trains_memory=False) is None


def test_stage2_without_a_stage1_adapter_is_a_clear_error(flash_data, tmp_path, capsys):
    code = main(["--recipe", str(REPO / "recipes" / "stage2_rhythm.json"), "--data", str(flash_data),
                 "--output", str(tmp_path / "r"), "--init", str(tmp_path / "nothing")])
    assert code == 2 and "adapter folder not found" in capsys.readouterr().err


# ---- pieces ----------------------------------------------------------------------------------


def test_data_order_depends_on_the_global_batch_only_and_resumes_from_a_batch_number():
    one = iter(EpochBatches(10, 4, 1, 0, seed=3))
    ranks = [iter(EpochBatches(10, 2, 2, r, seed=3)) for r in range(2)]
    batches = [next(one) for _ in range(6)]  # 3 epochs of 2 batches (2 windows dropped each)
    for b in batches:
        assert b == next(ranks[0]) + next(ranks[1])
    assert batches[0] + batches[1] != batches[2] + batches[3]  # each epoch its own permutation
    later = iter(EpochBatches(10, 4, 1, 0, seed=3, start=3))
    assert [next(later) for _ in range(3)] == batches[3:]
    with pytest.raises(DataError, match="fewer than one global batch"):
        EpochBatches(3, 2, 2, 0, seed=0)


def test_masked_cross_entropy_ignores_nan_positions():
    logits = torch.randn(2, 4, 5, 7, requires_grad=True)
    codes = torch.randint(0, 7, (2, 4, 5))
    mask = torch.rand(2, 4, 5) > 0.3
    nan_logits = torch.where(mask[..., None], logits, torch.full_like(logits, float("nan")))
    sums, counts = codebook_losses(nan_logits, codes, mask)
    expected = [torch.nn.functional.cross_entropy(logits[:, k][mask[:, k]], codes[:, k][mask[:, k]], reduction="sum")
                for k in range(4)]
    assert torch.allclose(sums, torch.stack(expected)) and counts.tolist() == mask.sum((0, 2)).tolist()
    (sums / counts).mean().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[~mask].abs().sum() == 0


def test_learning_rate_warms_up_then_decays_to_the_floor():
    r = Recipe(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    factors = [lr_factor(s, r) for s in range(111)]
    assert factors[0] < factors[5] < factors[9] < 1.0
    assert factors[10] == pytest.approx(1.0) and factors[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_recipe_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"stage": 1, "adapter": {"attn_dim": 64}}))
    r = Recipe.load(path, ["max_steps=7", "adapter.attn_heads=2", "trainable=[\"rhythm\"]"])
    assert (r.max_steps, r.adapter, r.trainable) == (7, {"attn_dim": 64, "attn_heads": 2}, ["rhythm"])
    from vidmusician.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown recipe keys"):
        Recipe.load(path, ["max_step=7"])


@pytest.mark.parametrize("override, message", [
    ("adapter.attn_dims=64", r"unknown adapter config keys \['attn_dims'\]; known: \[.*'attn_dim'"),
    ("adapter.encoder=\"tiny\"", r"adapter fields \['encoder'\] come from the dataset \(prepare the data again for another "
                                  r"encoder or rate\); leave them out of the recipe$"),
    ("adapter.dim=64", r"adapter fields \['dim'\] come from the backbone \(pass --backbone for another\); leave them out"),
    ("adapter.trained_window=30", r"adapter fields \['trained_window'\] are recorded by training from the dataset's windows "
                                  r"\(prepare --window sets them\); leave them out"),
    ("adapter.version=\"0\"", r"adapter fields \['version'\] are written by vidmusician; leave them out"),
])
def test_recipe_adapter_keys_that_fresh_adapters_cannot_take_are_refused_at_load(tmp_path, override, message):
    """A misspelled adapter field, or one the backbone and dataset set, is one line naming the
    recipe and the key, before any model loads (not a TypeError from the config's constructor)."""
    from vidmusician.errors import ConfigError

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"stage": 1}))
    with pytest.raises(ConfigError, match=rf"r.json with --set {re.escape(override)}: {message}"):
        Recipe.load(path, [override])
    Recipe.load(path, ["adapter.attn_dim=64", "adapter.rhythm_rank=null"])  # the settable ones still load


def test_resume_check_reads_recipes_of_older_versions(tmp_path):
    from vidmusician.errors import ConfigError
    from vidmusician.training.recipe import check_resume

    saved = dataclasses.asdict(Recipe(lr=0.01, min_lr=0.001))
    del saved["plausible_targets"]  # written before the field existed: its default
    saved["retired_field"] = 3  # a field recipes no longer have
    (tmp_path / "recipe.json").write_text(json.dumps(saved))
    check_resume(Recipe(lr=0.01, min_lr=0.001, max_steps=20000, save_every=10), tmp_path)
    with pytest.raises(ConfigError, match=r"\(betas: \[0.9, 0.95\] -> \[0.9, 0.99\]; plausible_targets: 0.001 -> 0\)"):
        check_resume(Recipe(lr=0.01, min_lr=0.001, betas=[0.9, 0.99], plausible_targets=0), tmp_path)
    check_resume(Recipe(lr=0.5), tmp_path / "no_run")  # nothing recorded: nothing to compare


# ---- resume: the RNG and damaged checkpoints -------------------------------------------------


@pytest.fixture(scope="module")
def short_run(flash_data, tmp_path_factory):
    """A 4-step run in this process with checkpoints at steps 2 and 4, and the RNG state it ended with."""
    tmp = tmp_path_factory.mktemp("short")
    r = recipe(tmp, max_steps=4, save_every=2, keep_checkpoints=3, eval_every=1000)
    out = tmp / "run"
    args = ["--recipe", str(r), "--data", str(flash_data), "--backbone", "tiny"]
    assert main(args + ["--output", str(out)]) == 0
    return args, out, torch.get_rng_state()


def rewound(run_dir: Path, to: Path) -> Path:
    """A copy of a run as if it had stopped after its step-2 checkpoint."""
    import shutil

    shutil.copytree(run_dir, to)
    shutil.rmtree(to / "adapter")
    (to / "checkpoints" / "latest").write_text("step-00000002\n")
    return to


def test_resume_restores_the_rng_where_it_is_next_used(short_run, tmp_path):
    """After a resume the RNG runs on exactly as in the uninterrupted run (dropout in the trainer
    would see the same numbers): here, the state both runs end with."""
    args, straight, end_state = short_run
    import shutil

    out = rewound(straight, tmp_path / "run")
    shutil.rmtree(out / "checkpoints" / "step-00000004")
    assert main(args + ["--output", str(out), "--resume"]) == 0
    assert torch.equal(torch.get_rng_state(), end_state)
    assert max_diff(adapter(straight), adapter(out)) < 1e-6


def test_a_damaged_checkpoint_falls_back_to_the_one_before(short_run, tmp_path, capsys):
    args, straight, _ = short_run
    out = rewound(straight, tmp_path / "run")
    (out / "checkpoints" / "latest").write_text("step-00000004\n")
    newest = out / "checkpoints" / "step-00000004" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a full disk cut it short
    capsys.readouterr()
    assert main(args + ["--output", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{newest.parent}: damaged checkpoint: optimizer.safetensors (" in err  # the file, not just the folder
    assert "resuming from step-00000002" in err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and all(w.startswith("vidmusician.training.train: warning: ") for w in warnings), err
    assert max_diff(adapter(straight), adapter(out)) < 1e-6  # steps 3-4 redone exactly

    # Nothing readable left: a clear error, never a silent start from scratch.
    (out / "checkpoints" / "step-00000002" / "adapter_model.safetensors").write_bytes(b"garbage")
    (out / "checkpoints" / "step-00000004" / "trainer_state.json").write_text("{")
    assert main(args + ["--output", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint to resume from" in err and "delete" in err and "Traceback" not in err


def test_resume_refuses_a_changed_recipe_but_takes_a_longer_run(short_run, tmp_path, capsys):
    """A new lr, seed or batch size would be ignored (the optimizer's state wins) or break the exact
    resume; only how long, how often it logs/evaluates/saves and how it loads may change."""
    args, straight, _ = short_run
    out = rewound(straight, tmp_path / "run")
    saved = (out / "recipe.json").read_text()
    capsys.readouterr()
    assert main(args + ["--output", str(out), "--resume", "--set", "lr=0.02", "--set", "seed=5",
                        "--set", "max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "lr: 0.01 -> 0.02; seed: 1234 -> 5)" in err and "new --output" in err and "max_steps:" not in err
    assert (out / "recipe.json").read_text() == saved and not (out / "adapter").exists()

    assert main(args + ["--output", str(out), "--resume", "--set", "max_steps=5", "--set", "log_every=2",
                        "--set", "save_every=1"]) == 0
    assert json.loads((out / "recipe.json").read_text())["max_steps"] == 5
    assert (out / "checkpoints" / "step-00000005").is_dir()


@pytest.mark.parametrize("signum, rc, save_every", [("SIGINT", 130, 2), ("SIGTERM", 143, 1000)])
def test_an_interrupted_run_says_where_resume_goes_on_in_one_line(flash_data, tmp_path, signum, rc, save_every):
    """Ctrl-C or SIGTERM mid-run: the step reached and the last checkpoint, no traceback, 128 + the signal."""
    import re
    import signal
    import time

    args = ["--recipe", recipe(tmp_path, max_steps=100000, save_every=save_every), "--data", flash_data,
            "--output", tmp_path / "run", "--backbone", "tiny"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "vidmusician.training.train"] + [str(a) for a in args], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=takes_ctrl_c)
    log, deadline = tmp_path / "run" / "log.jsonl", time.time() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(getattr(signal, signum))
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == rc and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    if save_every == 2:
        found = re.fullmatch(r"vidmusician\.training\.train: interrupted at step (\d+); the last checkpoint is step "
                             r"(\d+): `--resume` continues from there", last)
        assert found, err[-3000:]
        step, saved = int(found[1]), int(found[2])
        # An interrupt during a step's save leaves the checkpoint before it the last one.
        assert step >= 3 and saved % 2 == 0 and step - 2 <= saved <= step
        assert latest_checkpoint(tmp_path / "run").name == f"step-{saved:08d}"
    else:
        assert re.fullmatch(r"vidmusician\.training\.train: interrupted at step \d+, before the first checkpoint: "
                            r"the same command starts over", last), err[-3000:]


# ---- the launcher dies -----------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_stop_when_the_launcher_is_killed(flash_data, tmp_path):
    """accelerate launch starts workers in their own sessions: killing it alone must not leave them training.

    Their stderr is a pipe that closes with the launcher (as under ``subprocess.run`` with a
    timeout): a worker's notice to it fails, and the worker must still stop.

    Until then they evaluate and save at every step on a one-window holdout (``eval_windows=1``):
    process 1 evaluates none (and samples none) while process 0 does both, and neither waits for
    the other forever (test_uneven_shares has the other commands where a process has nothing to do).
    """
    import signal
    import time

    log = tmp_path / "out.txt"
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(30500 + os.getpid() % 1000), "-m", "vidmusician.training.train"]
    args = ["--recipe", recipe(tmp_path, max_steps=100000, log_every=1, batch_size=1, eval_every=1, eval_windows=1,
                               save_every=1), "--data", flash_data, "--output", tmp_path / "run", "--backbone", "tiny"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with open(log, "w") as out:
        proc = subprocess.Popen(launcher + [str(a) for a in args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while "step 2 holdout_loss" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert "step 2 holdout_loss" in log.read_text(), log.read_text()[-3000:]
        assert latest_checkpoint(tmp_path / "run") is not None  # and saved, each step
        workers += children(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()  # the read end of the workers' stderr: gone with the launcher
        deadline = time.time() + 30
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(w) for w in workers), log.read_text()[-2000:]
    finally:
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


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
