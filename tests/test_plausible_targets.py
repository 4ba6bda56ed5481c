"""The recipe's ``plausible_targets``: fine-codebook targets the frozen base rules out count zero in the loss.

A lossy soundtrack rewrites the fine codebooks into tokens the base (which learned clean
music) finds implausible; adapters trained to predict them learn the codec's noise, and
guidance amplifies it (docs/alignment.md). The learning test at the defaults is
``tests/test_learned_base.py::test_events_follow_the_flashes_at_default_sampling_on_aac_soundtracks``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import perturb_adapters, random_video_batch, tiny_config

from vidmusician.errors import ConfigError
from vidmusician.model import attach_adapters
from vidmusician.training.losses import codebook_losses, loss_mask, plausible_targets
from vidmusician.training.recipe import Recipe
from vidmusician.training.objective import Objective


def reference_keep(logits: np.ndarray, codes: np.ndarray, fraction: float, first: int) -> np.ndarray:
    """The rule written out: p(target) >= fraction * p(top) in codebooks >= first; NaN logits: not kept."""
    keep = np.zeros(codes.shape, dtype=bool)
    B, K, T = codes.shape
    for b in range(B):
        for k in range(K):
            for t in range(T):
                row = logits[b, k, t].astype(np.float64)
                if k < first:
                    keep[b, k, t] = True
                elif not np.isnan(row).any():
                    p = np.exp(row - row.max())
                    p /= p.sum()
                    keep[b, k, t] = p[codes[b, k, t]] >= fraction * p.max()
    return keep


def test_the_rule_against_a_written_out_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 30, 16, generator=g) * 3
    logits[0, 2, 5] = float("nan")  # outside the delay pattern
    codes = torch.randint(0, 16, (2, 4, 30), generator=g)
    for fraction, first in ((1e-3, 1), (0.1, 1), (0.5, 0), (0.5, 2)):
        got = plausible_targets(logits, codes, fraction, first=first)
        want = reference_keep(logits.numpy(), codes.numpy(), fraction, first)
        assert np.array_equal(got.numpy(), want), (fraction, first)
        assert 0 < got[:, first:].float().mean() < 1  # the case tells kept from dropped apart
    assert plausible_targets(logits, codes, 0.5)[:, 0].all()  # the coarse codes always count


def test_a_hand_made_step():
    # probabilities 0.5, 0.3, 0.15, 0.05 over four tokens: at 0.2 of the top, tokens 0-2 count (0.15 >= 0.1).
    row = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    logits = row.expand(1, 2, 4, 4).clone()
    codes = torch.tensor([[[3, 3, 3, 3], [0, 1, 2, 3]]])
    assert plausible_targets(logits, codes, 0.2).tolist() == [[[True] * 4, [True, True, True, False]]]
    assert plausible_targets(logits, codes, 0.7).tolist() == [[[True] * 4, [True, False, False, False]]]


@pytest.fixture
def setup(tiny):
    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm)  # the adapted model and the base disagree, so using the wrong one would show
    codes = torch.randint(0, 400, (2, 4, 60), generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 60, dtype=torch.bool)
    valid[1, 45:] = False
    return vm, codes, valid, random_video_batch(2, [True, True], num_frames=60)


@pytest.mark.parametrize("texts", [[None, None], ["piano", "drums"]], ids=["no-text", "text"])
def test_the_objective_filters_with_the_frozen_base(setup, texts):
    """The base's forward reads the same text as the adapted one (the text is encoded once for both)."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    vm, codes, valid, videos = setup
    conditions = [ConditioningAttributes(text={"description": t}) for t in texts]
    # The tiny random base is nearly uniform: a fraction near 1 makes it drop most fine targets.
    fraction = 0.6
    with torch.no_grad():
        sums, counts = Objective(vm, fraction)(codes, valid, videos, texts)
        plain, plain_counts = Objective(vm, fraction)(codes, valid, videos, texts, filtered=False)
        off = Objective(vm)(codes, valid, videos, texts)
        adapted = vm.compute_predictions(codes, videos, conditions)
        base = vm.compute_predictions(codes, None, conditions)
    mask = adapted.mask & loss_mask(vm.lm, valid)
    keep = plausible_targets(base.logits, codes, fraction)
    # The filter's mask is the base's: the adapted model's own would differ.
    assert not torch.equal(keep, plausible_targets(adapted.logits, codes, fraction))
    want, _ = codebook_losses(adapted.logits, codes, mask & keep)
    torch.testing.assert_close(sums, want, rtol=1e-5, atol=1e-4)
    # Dropped targets count zero; the counts stay every valid position (the step's mean is over them).
    assert torch.equal(counts, plain_counts) and torch.equal(counts, mask.sum(dim=(0, 2)))
    torch.testing.assert_close(sums[0], plain[0])  # the first codebook is never filtered
    assert (sums[1:] < plain[1:] - 1).all()
    # 0 is MusicGen's loss, and so is the holdout loss (filtered=False).
    torch.testing.assert_close(off[0], plain)


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.1", math.nan, True])
def test_bad_values_are_refused(value):
    with pytest.raises(ConfigError, match="plausible_targets"):
        Recipe(plausible_targets=value)


def test_the_shipped_recipes_filter():
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("stage1_semantic.json", "stage2_rhythm.json"):
        assert Recipe.load(recipes / name).plausible_targets == Recipe().plausible_targets == 1e-3


def test_the_holdout_loss_counts_every_target(setup, tmp_path):
    from accelerate import Accelerator
    from test_damage import random_dataset

    from vidmusician.training.dataset import PreparedDataset
    from vidmusician.training.objective import holdout_loss

    vm = setup[0]
    holdout = PreparedDataset(random_dataset(tmp_path / "data"), "holdout")
    accelerator = Accelerator(cpu=True)
    plain = holdout_loss(Objective(vm), holdout, accelerator, batch_size=2, max_windows=8)
    assert holdout_loss(Objective(vm, 0.6), holdout, accelerator, batch_size=2, max_windows=8) == plain
