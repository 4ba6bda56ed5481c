"""Per-codebook loss weights (the recipe's ``codebook_weights``): an option for soundtracks whose fine
codebooks carry a lossy codec's noise (docs/alignment.md)."""

from __future__ import annotations

import pytest
import torch
from train_runs import adapter, max_diff, recipe, train_here
from train_runs import flash_data  # noqa: F401  (a pytest fixture)

from vidmusician.errors import ConfigError
from vidmusician.training.recipe import Recipe
from vidmusician.training.objective import codebook_weights


def test_weights_are_normalized_and_default_to_equal():
    torch.testing.assert_close(codebook_weights(Recipe(), 4), torch.full((4,), 0.25))
    torch.testing.assert_close(codebook_weights(Recipe(codebook_weights=[4, 2, 1, 1]), 4),
                               torch.tensor([0.5, 0.25, 0.125, 0.125]))
    with pytest.raises(ConfigError, match="codebook_weights has 3 weights, the backbone 4 codebooks"):
        codebook_weights(Recipe(codebook_weights=[1, 1, 1]), 4)


@pytest.mark.parametrize("value, needle", [([1, -1], "codebook_weights"), ([0, 0], "must not all be 0"),
                                           ("1,1", "a list of numbers"), ([], "a list of numbers")])
def test_bad_weights_are_refused(value, needle):
    with pytest.raises(ConfigError, match=needle):
        Recipe(codebook_weights=value)


def test_the_weights_reach_the_gradient(flash_data, tmp_path):  # noqa: F811
    def train(name, **fields):
        out = tmp_path / name
        train_here(["--recipe", recipe(tmp_path, max_steps=3, **fields), "--data", flash_data, "--backbone", "tiny",
                    "--output", out])
        return adapter(out)

    equal = train("equal")
    assert max_diff(train("scaled", codebook_weights=[2, 2, 2, 2]), equal) < 1e-6  # only the ratios count
    assert max_diff(train("coarse", codebook_weights=[1, 0, 0, 0]), equal) > 1e-4
