"""What a run is told: the shipped recipes chain stage 1 into stage 2, recipe files and their overrides,
a resumed run's recipe check, the learning-rate schedule, the data order and the masked loss."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from train_runs import REPO, SECONDS, TINY_ADAPTER, adapter, recipe, train_here
from train_runs import flash_data  # noqa: F401  (a pytest fixture)

from vidmusician.errors import DataError
from vidmusician.training.losses import codebook_losses
from vidmusician.training.recipe import Recipe
from vidmusician.training.train import EpochBatches, lr_factor, main


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

    with pytest.raises(ConfigError, match=r"^--set max_step: unknown recipe key \(did you mean max_steps\?\)$"):
        Recipe.load(path, ["max_step=7"])


@pytest.mark.parametrize("override, message", [
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

