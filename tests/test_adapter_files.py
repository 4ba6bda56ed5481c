"""Adapter folders on disk: a save stopped between its two files is refused, not loaded mixed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vidmusician.fileio as fileio
from vidmusician.adapter_files import read_adapter, write_adapter
from vidmusician.cli import main
from vidmusician.config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig
from vidmusician.errors import AdapterError

OLD = AdapterConfig(dim=32, num_layers=4, rhythm_rank=None, encoder="tiny", stage=1)
NEW = OLD.replace(stage=2, rhythm_context=2)


class Killed(BaseException):
    """What a kill looks like to the code it stops: nothing after it runs (no except clause catches it)."""


def save_killed_before_the_config(monkeypatch, folder, config, state):
    """``write_adapter`` stopped right after the weights' rename, before the config's."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == CONFIG_NAME:
            raise Killed
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(Killed):
        write_adapter(folder, config, state)
    monkeypatch.setattr(fileio.os, "replace", real)


def test_a_save_stopped_between_the_two_files_is_refused_in_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "adapter"
    write_adapter(folder, OLD, {"w": torch.ones(2)})
    save_killed_before_the_config(monkeypatch, folder, NEW, {"w": torch.zeros(3)})
    # The folder now holds the new weights beside the old config ...
    assert load_file(folder / WEIGHTS_NAME)["w"].shape == (3,) and AdapterConfig.load(folder) == OLD
    # ... which read_adapter refuses, naming the folder and the fix.
    with pytest.raises(AdapterError) as info:
        read_adapter(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{folder}: half saved")
    assert "save the adapter again, or use the checkpoint before it" in message
    # Saving again completes the pair.
    write_adapter(folder, NEW, {"w": torch.zeros(3)})
    config, tensors = read_adapter(folder)
    assert config == NEW and tensors["w"].shape == (3,)


def test_a_stopped_save_of_the_same_config_leaves_a_pair_that_loads(tmp_path, monkeypatch):
    """A checkpoint re-saved with the same config: the new weights do belong with the config there."""
    folder = tmp_path / "adapter"
    write_adapter(folder, OLD, {"w": torch.ones(2)})
    save_killed_before_the_config(monkeypatch, folder, OLD, {"w": torch.full((2,), 2.0)})
    config, tensors = read_adapter(folder)
    assert config == OLD and torch.equal(tensors["w"], torch.full((2,), 2.0))


def test_a_save_that_fails_before_its_renames_leaves_the_old_pair_and_no_mark(tmp_path, monkeypatch):
    """A full disk (or Ctrl-C) while the weights are written: the folder is as it was, and an edit by hand
    afterwards still loads."""
    folder = tmp_path / "adapter"
    write_adapter(folder, OLD, {"w": torch.ones(2)})

    def full(path, tensors, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vidmusician.adapter_files.write_safetensors", full)
    with pytest.raises(OSError):
        write_adapter(folder, NEW, {"w": torch.zeros(3)})
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    (folder / CONFIG_NAME).write_text(OLD.replace(trained_window=5.0).to_json())
    config, tensors = read_adapter(folder)
    assert config.trained_window == 5.0 and torch.equal(tensors["w"], torch.ones(2))


def test_the_same_edit_by_hand_after_a_resave_still_loads(tmp_path):
    """A script that sets a field, a save of new weights, the same script again: the pair belongs together."""
    folder = tmp_path / "adapter"
    write_adapter(folder, OLD, {"w": torch.ones(2)})
    edited = OLD.replace(trained_window=5.0).to_json()
    (folder / CONFIG_NAME).write_text(edited)
    write_adapter(folder, AdapterConfig.load(folder).replace(trained_window=2.0), {"w": torch.zeros(2)})
    (folder / CONFIG_NAME).write_text(edited)
    assert read_adapter(folder)[0].trained_window == 5.0


def test_folders_without_the_digests_and_edited_configs_still_load(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    # As releases before the digests wrote it.
    save_file({"w": torch.ones(2)}, folder / WEIGHTS_NAME, {"format": "pt", "backbone": OLD.backbone})
    (folder / CONFIG_NAME).write_text(OLD.to_json())
    assert read_adapter(folder)[0] == OLD
    # A completed save over another adapter, its config edited by hand afterwards.
    write_adapter(tmp_path / "adapter", NEW, {"w": torch.zeros(3)})
    (folder / CONFIG_NAME).write_text(NEW.replace(trained_window=5.0).to_json())
    assert read_adapter(folder)[0].trained_window == 5.0


def test_a_mark_left_by_a_save_killed_before_its_renames_does_not_refuse_an_edit_by_hand(tmp_path, monkeypatch):
    """SIGKILL while the weights are written (the long part of a save): the old pair and a mark naming the
    new config stay; the old pair loads, and so does its config edited by hand."""
    folder = tmp_path / "adapter"
    write_adapter(folder, OLD, {"w": torch.ones(2)})

    def killed(path, tensors, metadata=None):
        raise Killed

    monkeypatch.setattr("vidmusician.adapter_files.write_safetensors", killed)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # a kill runs no cleanup
    with pytest.raises(Killed):
        write_adapter(folder, NEW, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert (folder / ".saving").is_file()
    (folder / CONFIG_NAME).write_text(OLD.replace(trained_window=5.0).to_json())
    config, tensors = read_adapter(folder)
    assert config.trained_window == 5.0 and torch.equal(tensors["w"], torch.ones(2))


def test_info_refuses_a_half_saved_folder_in_the_line_loading_gives(tmp_path, monkeypatch, capsys):
    """`vidmusician info` shows the config: beside the weights of a stopped save it is not theirs, so info
    refuses it as loading does (exit 2), given the folder or its config file; a whole folder shows as before."""
    folder = tmp_path / "adapter"
    write_adapter(folder, OLD, {"w": torch.ones(2)})
    assert main(["info", str(folder)]) == 0 and "stage            1" in capsys.readouterr().out
    save_killed_before_the_config(monkeypatch, folder, NEW, {"w": torch.zeros(3)})
    with pytest.raises(AdapterError) as loading:
        read_adapter(folder)
    for given in (folder, folder / CONFIG_NAME):
        assert main(["info", str(given)]) == 2
        out, err = capsys.readouterr()
        assert (out, err) == ("", f"vidmusician info: error: {loading.value}\n")
    write_adapter(folder, NEW, {"w": torch.zeros(3)})
    assert main(["info", str(folder)]) == 0 and "stage            2" in capsys.readouterr().out
