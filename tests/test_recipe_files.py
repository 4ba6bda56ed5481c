"""Naming a recipe: a file, or a shipped recipe by its name (what a `pip install` has, without recipes/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidmusician.errors import ConfigError
from vidmusician.training.recipe import SHIPPED_RECIPES, Recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["stage1_semantic", "stage2_rhythm.json"])
def test_a_shipped_recipe_is_named_by_its_name_from_anywhere(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stem = name.removesuffix(".json")
    assert Recipe.load(name) == Recipe.load(REPO / "recipes" / f"{stem}.json")
    assert Recipe.load(name, ["max_steps=7"]).max_steps == 7
    assert SHIPPED_RECIPES.resolve() == (REPO / "recipes").resolve()  # in a checkout: recipes/ itself


def test_a_file_of_that_name_here_wins_over_the_shipped_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = json.loads((REPO / "recipes" / "stage1_semantic.json").read_text()) | {"max_steps": 3}
    Path("stage1_semantic.json").write_text(json.dumps(mine))
    assert Recipe.load("stage1_semantic.json").max_steps == 3
    assert Recipe.load("stage1_semantic").max_steps != 3  # no file named so here: the shipped one


@pytest.mark.parametrize("name", ["stage3", "recipes/stage3.json", "elsewhere/stage1_semantic.json"])
def test_no_such_recipe_names_the_shipped_ones(name, tmp_path, monkeypatch):
    """Only a bare name is looked up among the shipped recipes: a path names a file of the user's."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        Recipe.load(name)
    assert str(exc.value) == (f"{name}: no such recipe; pass a recipe file (JSON), or the name of a shipped one: "
                              f"stage1_semantic, stage2_rhythm")


def test_a_folder_of_that_name_does_not_hide_the_shipped_recipe_and_a_path_names_a_file(tmp_path, monkeypatch):
    """`--output stage1_semantic` then `--recipe stage1_semantic --resume`: the run's folder is no recipe.
    './stage1_semantic' is a path the user typed: no shipped recipe stands in for it."""
    monkeypatch.chdir(tmp_path)
    Path("stage1_semantic").mkdir()
    assert Recipe.load("stage1_semantic") == Recipe.load(REPO / "recipes" / "stage1_semantic.json")
    with pytest.raises(ConfigError, match=r"^\./stage2_rhythm: no such recipe"):
        Recipe.load("./stage2_rhythm")
