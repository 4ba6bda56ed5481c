"""An adapter run on another backbone than the one it records: taken, with a warning naming both.

Not where passing a backbone is the way to run it: a recorded folder that is not on this
machine (another machine's, or the ``./NAME`` a pushed adapter records). Names are compared
as recorded, so a folder given by a relative path is the folder recorded by its absolute one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from conftest import save_tiny_adapter
from media import flash_video
from vidmusician import cli
from vidmusician.adapter_files import renamed_backbone
from vidmusician.backbones import other_backbone
from vidmusician.model import load_adapter

OTHER = "running it on"  # the warning's words


def recording(folder: Path, source: Path, backbone: str) -> Path:
    """``source``'s adapter, recording ``backbone`` as its own (as an adapter trained on it would)."""
    folder.mkdir()
    for name, data in renamed_backbone(source, backbone).items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    return save_tiny_adapter(tmp_path_factory.mktemp("adapters") / "tiny")


def loaded_warnings(adapter, backbone) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_adapter(adapter, backbone=backbone, device="cpu")
    return [str(w.message) for w in caught if OTHER in str(w.message)]


def test_an_adapter_on_a_backbone_of_its_shape_with_other_weights_warns_naming_both(tiny_adapter, tmp_path):
    learned = recording(tmp_path / "learned", tiny_adapter, "tiny-learned")
    lines = loaded_warnings(learned, "tiny")
    assert len(lines) == 1, lines
    assert lines[0] == (f"{learned}: the adapter was trained on backbone tiny-learned; running it on tiny, whose "
                        f"weights may differ (the music may not follow the video as it did in training)")
    # A loaded MusicGen given as the backbone is named by its own name.
    from vidmusician.random_backbones import tiny_musicgen

    assert len(loaded_warnings(learned, tiny_musicgen())) == 1
    assert loaded_warnings(tiny_adapter, "tiny") == []  # its own backbone


@pytest.mark.parametrize("recorded", ["/no/such/machine/musicgen", "./musicgen-pushed"])
def test_a_recorded_folder_not_on_this_machine_takes_another_backbone_without_a_word(tiny_adapter, tmp_path,
                                                                                      monkeypatch, recorded):
    """The project's fix for such an adapter is to pass --backbone: doing so is no mistake to warn of."""
    monkeypatch.chdir(tmp_path)
    adapter = recording(tmp_path / "adapter", tiny_adapter, recorded)
    assert loaded_warnings(adapter, "tiny") == []


def test_a_folder_by_a_relative_path_is_the_folder_recorded_by_its_absolute_one(tmp_path, monkeypatch):
    (tmp_path / "models" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    recorded = str(tmp_path / "models" / "x")
    assert not other_backbone(recorded, "./models/x") and not other_backbone(recorded, "models/x")
    assert other_backbone(recorded, "facebook/musicgen-small") and other_backbone(recorded, "tiny")
    assert not other_backbone("./models/x", recorded)  # as a pushed adapter records it, where it is here
    assert not other_backbone("tiny", None)  # a MusicGen without a name: nothing to compare


def test_generate_says_the_adapter_runs_on_another_backbone(tiny_adapter, tmp_path, capsys):
    clip = flash_video(tmp_path / "clip.mp4", [0.2], duration=0.4, size=32)
    learned = recording(tmp_path / "learned", tiny_adapter, "tiny-learned")
    argv = ["generate", str(clip), "--backbone", "tiny", "-q", "--seed", "0"]
    assert cli.main([*argv, "--adapter", str(learned), "-o", str(tmp_path / "p.wav")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if OTHER in line]
    assert len(lines) == 1 and lines[0].startswith("vidmusician generate: warning: "), lines
    assert "trained on backbone tiny-learned; running it on tiny" in lines[0]
    assert cli.main([*argv, "--adapter", str(tiny_adapter), "-o", str(tmp_path / "q.wav")]) == 0
    assert OTHER not in capsys.readouterr().err
    assert os.path.exists(tmp_path / "p.wav")


def test_stage_2_on_another_backbone_than_stage_1_warns_and_records_the_one_it_trained_on(tiny_adapter, tmp_path,
                                                                                           capsys):
    """train --init ADAPTER --backbone OTHER loads the adapter the same way: the same warning, not a refusal;
    the release records the backbone it was trained on last, which generation then loads by default."""
    import json

    import torch
    from test_damage import random_dataset

    data = random_dataset(tmp_path / "data")  # prepared with the tiny backbone's codec
    stage1 = recording(tmp_path / "stage1", tiny_adapter, "tiny-learned")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stage": 2, "batch_size": 2, "max_steps": 1, "warmup_steps": 1, "num_workers": 0,
                                  "eval_every": 1000, "save_every": 1000, "gradient_checkpointing": False}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["train", "--recipe", str(recipe), "--data", str(data), "--output", str(tmp_path / "run"),
                         "--backbone", "tiny", "--init", str(stage1)]) == 0
    finally:
        torch.set_num_threads(threads)
    # One line of the command's (not Python's file:line display).
    said = [line for line in capsys.readouterr().err.splitlines() if "running it on tiny" in line]
    assert len(said) == 1 and said[0].startswith("vidmusician train: warning: ") and said[0].endswith(
        ": the adapter was trained on backbone tiny-learned; running it on tiny, whose weights may differ "
        "(the music may not follow the video as it did in training)"), said
    assert json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())["backbone"] == "tiny"


def test_the_same_folder_by_a_link_or_the_recorded_hub_names_last_part_is_no_other_backbone(tmp_path, monkeypatch):
    """A folder behind a link is the folder; a folder named as a recorded Hub name's last part is a local
    copy of that model, or the folder an adapter of an older vidmusician recorded relative ('models/mygen')."""
    real = tmp_path / "real" / "gen"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert not other_backbone(str(real), str(tmp_path / "link" / "gen"))
    assert not other_backbone("models/gen", str(real))  # no such folder here: read as a Hub id
    assert not other_backbone("facebook/gen", "real/gen")
    assert other_backbone("facebook/musicgen-small", str(real))
    assert other_backbone(str(real), "tiny") and other_backbone("tiny-learned", "tiny")
