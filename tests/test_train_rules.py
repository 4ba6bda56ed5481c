"""Training's finer rules: text dropout, stereo's coarse codebooks, a resumed run's schedule,
evaluation off the training RNG, no weight decay on identity maps."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import types

import pytest
import torch
from conftest import perturb_adapters, random_video_batch, tiny_config
from train_runs import adapter, max_diff, recipe, train_here

from vidmusician.errors import ConfigError
from vidmusician.model import attach_adapters
from vidmusician.random_backbones import build, codec_config, lm_config, tiny_musicgen
from vidmusician.training.dataset import DatasetMeta, EpochBatches, Example, ShardWriter, TextDropout
from vidmusician.training.losses import coarse_codebooks
from vidmusician.training.recipe import Recipe, check_resume, schedule_change
from vidmusician.training.model_setup import optimizer_groups
from vidmusician.training.objective import Objective, holdout_loss
from vidmusician.video.features import VideoFeatures

SECONDS, FRAME_RATE = 1.0, 50
TEXTS = ("piano", "drums", "strings", "choir")


def features(g: torch.Generator) -> VideoFeatures:
    return VideoFeatures(torch.randn(1, 32, generator=g), torch.rand(25, 16, generator=g), 1.0, 25.0, SECONDS,
                         "tiny", "gelu")


def captioned(root, texts: bool = True):
    """8 training and 2 holdout windows of 1 s, random codes and features; each with a text (or none)."""
    root.mkdir(parents=True)
    DatasetMeta("tiny", 32000, 1, float(FRAME_RATE), 4, 400, "tiny", 32, 16, 1.0, 25.0, SECONDS, SECONDS).save(root)
    g = torch.Generator().manual_seed(0)
    writer = ShardWriter(root)
    for i in range(10):
        codes = torch.randint(0, 400, (4, int(SECONDS * FRAME_RATE)), generator=g)
        writer.add({"source": f"c{i}", "split": "train" if i < 8 else "holdout",
                    "text": TEXTS[i % len(TEXTS)] if texts else None}, [(0.0, codes, features(g))])
    writer.flush()
    return root


@pytest.fixture(scope="module")
def captioned_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("captioned")
    return captioned(tmp / "texts"), captioned(tmp / "none", texts=False)


# ---- text dropout ------------------------------------------------------------------------------


def test_text_dropout_draws_each_window_alike_for_any_process_count_and_off_the_global_rng():
    texts = [f"t{i}" for i in range(4)]
    one = TextDropout(0.5, EpochBatches(16, 4, 1, 0, seed=3))
    halves = [TextDropout(0.5, EpochBatches(16, 2, 2, rank, seed=3)) for rank in range(2)]
    state = torch.get_rng_state()
    draws = [one(texts, b) for b in range(500)]
    assert torch.equal(torch.get_rng_state(), state)
    for b in range(20):  # a global batch split over two processes drops the same windows
        assert draws[b] == halves[0](texts[:2], b) + halves[1](texts[2:], b)
    assert draws[:20] == [one(texts, b) for b in range(20)]  # a function of the batch: a resume draws the same
    assert 0.45 < sum(t is None for d in draws for t in d) / 2000 < 0.55
    assert len({tuple(t is None for t in d) for d in draws}) == 16  # batches draw apart
    rare = TextDropout(0.1, EpochBatches(16, 4, 1, 0, seed=3))
    assert 0.08 < sum(t is None for b in range(500) for t in rare(texts, b)) / 2000 < 0.12
    assert draws[:20] != [TextDropout(0.5, EpochBatches(16, 4, 1, 0, seed=4))(texts, b) for b in range(20)]
    assert all(TextDropout(0.0, EpochBatches(16, 4, 1, 0, seed=3))(texts, b) == texts for b in range(50))


def test_dropped_texts_train_as_no_text_in_the_conditioning_and_the_plausible_targets(captioned_data, tmp_path):
    """text_dropout 1 on a captioned dataset trains what the same windows without text train,
    with the plausible-targets filter on (its base encodes the text too); 0 trains on the texts."""
    texts, none = captioned_data
    runs = {}
    for name, data, p in (("dropped", texts, 1.0), ("none", none, 0.0), ("kept", texts, 0.0)):
        r = recipe(tmp_path, stage=1, trainable=["semantic"], batch_size=4, max_steps=2, text_dropout=p,
                   plausible_targets=0.5)
        train_here(["--recipe", r, "--data", data, "--backbone", "tiny", "--output", tmp_path / name])
        runs[name] = adapter(tmp_path / name)
    assert max_diff(runs["dropped"], runs["none"]) < 1e-6
    assert max_diff(runs["kept"], runs["none"]) > 1e-4


def test_resume_takes_text_dropout_0_from_a_recipe_json_without_the_field(tmp_path):
    saved = {k: v for k, v in dataclasses.asdict(Recipe()).items() if k != "text_dropout"}
    (tmp_path / "recipe.json").write_text(json.dumps(saved))
    resumed = check_resume(Recipe(max_steps=20000), tmp_path)  # the default: what the run trained with
    assert resumed.recipe.text_dropout == 0.0 and resumed.former == ("text_dropout",)
    assert resumed.recipe.max_steps == 20000 and resumed.max_steps == Recipe().max_steps
    with pytest.raises(ConfigError, match=r"\(text_dropout: 0.0 -> 0.3\)"):
        check_resume(Recipe(text_dropout=0.3), tmp_path)
    (tmp_path / "recipe.json").write_text(json.dumps(dict(saved, text_dropout=0.1)))  # a run that recorded it
    assert check_resume(Recipe(), tmp_path).recipe.text_dropout == 0.1
    with pytest.raises(ConfigError, match=r"\(text_dropout: 0.1 -> 0.0\)"):
        check_resume(Recipe(text_dropout=0.0), tmp_path)


def test_a_run_made_without_text_dropout_resumes_exactly_as_it_trained(captioned_data, tmp_path):
    """recipe.json of a run from before the field: resumed with the shipped default, it goes on
    without text dropout (exactly the uninterrupted run), and its recipe.json still lacks it."""
    texts, _ = captioned_data
    seed = next(s for s in range(100)  # a seed whose default dropout would drop a text in steps 3-4
                if any(None in TextDropout(0.1, EpochBatches(8, 4, 1, 0, s))(TEXTS, b) for b in (2, 3)))
    r = recipe(tmp_path, stage=1, trainable=["semantic"], batch_size=4, max_steps=4, save_every=2,
               keep_checkpoints=3, seed=seed, text_dropout=0.0)
    args = ["--recipe", r, "--data", texts, "--backbone", "tiny"]
    straight = tmp_path / "straight"
    train_here(args + ["--output", straight])
    out = tmp_path / "resumed"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "adapter")
    shutil.rmtree(out / "checkpoints" / "step-00000004")
    (out / "checkpoints" / "latest").write_text("step-00000002\n")
    saved = json.loads((out / "recipe.json").read_text())
    del saved["text_dropout"]
    (out / "recipe.json").write_text(json.dumps(saved))
    # The run's recipe said 0; resumed with today's default (what the shipped recipes say).
    train_here(args + ["--output", out, "--resume", "--set", "text_dropout=0.1"])
    assert max_diff(adapter(straight), adapter(out)) < 1e-6
    assert "text_dropout" not in json.loads((out / "recipe.json").read_text())


# ---- stereo: each channel's coarse codebook --------------------------------------------------


def test_plausible_targets_count_every_target_of_both_stereo_channels_first_codebooks():
    cfg = lm_config(32, 4, 4, n_q=8, card=400)
    cfg.codebooks_pattern.delay.delays = [q // 2 for q in range(8)]  # interleaved [L0, R0, L1, R1, ...]
    musicgen = build(cfg, codec_config(50, 400, n_q=8), "tiny-stereo", seed=0)
    assert coarse_codebooks(musicgen.lm) == 2 and coarse_codebooks(tiny_musicgen().lm) == 1
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm)
    vm.eval()
    codes = torch.randint(0, 400, (2, 8, 40), generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 40, dtype=torch.bool)
    videos = random_video_batch(2, [True, True], num_frames=40, num_global=2)
    objective = Objective(vm, plausible_targets=0.5)
    with torch.no_grad():
        kept, counts = objective(codes, valid, videos, [None, None])
        every, counts_every = objective(codes, valid, videos, [None, None], filtered=False)
    assert torch.equal(counts, counts_every)
    assert torch.allclose(kept[:2], every[:2])  # L0 and R0: every target counts
    assert (kept[2:] < every[2:]).all()  # the finer codebooks: the filter acts


# ---- a longer max_steps on resume ---------------------------------------------------------------


def test_a_longer_max_steps_names_the_learning_rate_before_and_after():
    r = Recipe(max_steps=20000, warmup_steps=500)
    assert schedule_change(10000, r, 5000) == ("max_steps 10000 -> 20000: the learning rate follows the new "
                                               "schedule (5.9e-05 -> 8.9e-05 at step 5000)")
    assert schedule_change(20000, r, 5000) is None and schedule_change(None, r, 5000) is None


def test_a_run_resumed_with_a_longer_max_steps_follows_the_new_schedule_from_the_resumed_step(
        captioned_data, tmp_path, capsys):
    """Stopped at step 2 of 4 and resumed with max_steps 7, a run equals one made with 7 from the
    start: the steps before the resume (warmup, then the cosine's first, lr 0.01) are alike in
    both schedules, and from step 2 on the resumed run takes the new schedule's lr, not the one
    its checkpoint's optimizer held."""
    texts, _ = captioned_data
    r = recipe(tmp_path, stage=1, trainable=["semantic"], batch_size=4, max_steps=4, warmup_steps=1,
               save_every=2, keep_checkpoints=3, text_dropout=0.0)
    args = ["--recipe", r, "--data", texts, "--backbone", "tiny"]
    out = tmp_path / "resumed"
    train_here(args + ["--output", out])
    shutil.rmtree(out / "adapter")
    shutil.rmtree(out / "checkpoints" / "step-00000004")
    (out / "checkpoints" / "latest").write_text("step-00000002\n")
    capsys.readouterr()
    train_here(args + ["--output", out, "--resume", "--set", "max_steps=7"])
    line = "max_steps 4 -> 7: the learning rate follows the new schedule (0.0078 -> 0.0094 at step 2)"
    assert line in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    train_here(args + ["--output", fresh, "--set", "max_steps=7"])
    assert max_diff(adapter(fresh), adapter(out)) < 1e-6


# ---- evaluation leaves the training RNG alone ----------------------------------------------------


def test_holdout_loss_draws_nothing_from_the_global_rng(tiny):
    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    g = torch.Generator().manual_seed(0)
    windows = [Example(torch.randint(0, 400, (4, 50), generator=g), features(g), None) for _ in range(3)]
    accelerator = types.SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"),
                                        autocast=contextlib.nullcontext, reduce=lambda t, op: t)
    state = torch.get_rng_state()
    loss = holdout_loss(Objective(vm), windows, accelerator, batch_size=2, max_windows=3)
    assert loss > 0 and torch.equal(torch.get_rng_state(), state)


# ---- weight decay ----------------------------------------------------------------------------------


def test_full_width_identity_linears_do_not_decay_toward_zero(tiny):
    from vidmusician.adapter.layers import IdentityLinear

    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen, rhythm_rank=None))
    vm.set_trainable(["rhythm"])
    decayed, rest = optimizer_groups(vm, 0.1)
    identities = [m for m in vm.lm.modules() if isinstance(m, IdentityLinear)]
    assert identities and all(m.rank is None for m in identities)
    ids = {id(m.linear.weight) for m in identities}
    assert not ids & {id(p) for p in decayed["params"]} and ids <= {id(p) for p in rest["params"]}
    assert decayed["params"]  # the rhythm input's projection still decays

    # A step with no gradient leaves the identity as it is (decay alone would shrink it).
    optimizer = torch.optim.AdamW([decayed, rest], lr=0.1)
    for p in vm.trainable_parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert all(torch.equal(m.linear.weight, torch.eye(m.linear.weight.shape[0])) for m in identities)

    low_rank = attach_adapters(tiny(), tiny_config(musicgen, rhythm_rank=4))
    low_rank.set_trainable(["rhythm"])
    decayed, _ = optimizer_groups(low_rank, 0.1)
    ups = {id(m.up.weight) for m in low_rank.lm.modules() if isinstance(m, IdentityLinear)}
    assert ups and ups <= {id(p) for p in decayed["params"]}  # the low-rank update starts at 0: it decays
