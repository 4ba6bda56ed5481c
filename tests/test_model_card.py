"""The model card's evaluation section, from a real `vidmusician eval --output` report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from media import click_track, flash_video, write_audio

from vidmusician import cli
from vidmusician.model_card import adapter_card
from vidmusician.sizing import load_preset


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    (root / "v").mkdir(), (root / "g").mkdir()
    flash_video(root / "v" / "clip.mp4", [0.5, 1.5], 2.0)
    write_audio(root / "g" / "clip_music.wav", click_track([0.5, 1.0, 1.5], 2.0).astype(np.float32))
    return root


def _card(clip, tmp_path, *options) -> str:
    report = tmp_path / "report.json"
    assert cli.main(["eval", "--videos", str(clip / "v"), "--generated", str(clip / "g"), "--out", str(report),
                     "--quiet", *options]) == 0
    (tmp_path / "adapter").mkdir()
    card = adapter_card(tmp_path / "adapter", load_preset("musicgen-small"), "org/name", report=report).text
    return card[card.index("## Evaluation"):], json.loads(report.read_text())


@pytest.mark.parametrize("sigma", [None, "0.05"])
def test_the_beat_alignment_comes_with_its_sigma(clip, tmp_path, sigma):
    section, report = _card(clip, tmp_path, "--encoder", "tiny", *(["--ba-sigma", sigma] if sigma else []))
    shown = sigma or "0.12"  # the default, 3 frames at 25 fps
    assert f"| beat_alignment (σ = {shown} s) | {report['mean']['beat_alignment']:.4f} |" in section
    assert "on 1 clip (means, visual beats from `tiny` (GELU))" in section


def test_the_card_says_when_the_visual_beats_come_from_optical_flow(clip, tmp_path):
    section, _ = _card(clip, tmp_path, "--visual-source", "flow")
    assert "visual beats from optical flow" in section and "| beat_alignment (σ = 0.12 s) |" in section


@pytest.mark.parametrize("trained_window", [10.0, None])
def test_the_card_and_info_name_the_training_windows_where_known(tmp_path, capsys, trained_window):
    folder = tmp_path / "adapter"
    folder.mkdir()
    config = load_preset("musicgen-small").replace(trained_window=trained_window)
    config.save(folder / "adapter_config.json")
    card = adapter_card(folder, config, "org/name").text
    assert cli.main(["info", str(folder)]) == 0
    shown = capsys.readouterr().out
    said = "memory 512-d, 30 tokens, trained on 10 s windows)"
    if trained_window is None:  # an older adapter: nothing to say, nothing guessed
        assert "memory 512-d, 30 tokens)" in card and "memory 512-d, 30 tokens)" in shown
    else:
        assert said in card and said in shown
