"""`eval` scores with the visual encoder the music was made with, and says which it used."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from media import flash_video

from vidmusician import cli
from vidmusician.audio_io import read_tags
from vidmusician.muxing import write_output


def test_eval_takes_the_encoder_recorded_by_generate(tiny, tmp_path, capsys):
    from vidmusician.model import attach_adapters

    musicgen = tiny()
    attach_adapters(musicgen, tiny_config(musicgen)).save_pretrained(tmp_path / "adapter")
    videos, generated = tmp_path / "videos", tmp_path / "generated"
    videos.mkdir(), generated.mkdir()
    flash_video(videos / "clip.mp4", [0.5, 1.0, 1.5], 2.0, size=32)
    assert cli.main(["generate", str(videos / "clip.mp4"), "--adapter", str(tmp_path / "adapter"), "--backbone",
                     "tiny", "-o", str(generated / "clip.wav"), "--quiet"]) == 0
    assert read_tags(generated / "clip.wav")["encoder"] == "tiny"
    # No --encoder: the one that made the music (tiny, offline), not the ViT-B-32 default (a download).
    assert cli.main(["eval", "--videos", str(videos), "--generated", str(generated), "--out",
                     str(tmp_path / "report.json"), "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["encoder"] == {"spec": "tiny", "activation": "gelu", "source": "recorded in the generated files"}
    assert "visual encoder: tiny (gelu, recorded in the generated files)" in capsys.readouterr().out


def test_untagged_or_disagreeing_files_fall_back_to_the_default(tmp_path):
    from vidmusician.evaluation.evaluate import encoder_of

    video = flash_video(tmp_path / "v.mp4", [0.5], 1.0, size=32)
    music = torch.zeros(1, 32000)
    write_output(tmp_path / "a.wav", music, 32000, tags={"encoder": "tiny"})
    write_output(tmp_path / "b.mp4", music, 32000, video=video, tags={"encoder": "ViT-B-32:openai"})
    write_output(tmp_path / "c.flac", music, 32000)
    lines = []
    # No activation recorded (outputs of older versions): the weights' own, GELU for tiny.
    assert encoder_of([tmp_path / "a.wav", tmp_path / "c.flac"], lines.append) == (
        "tiny", "gelu", "recorded in the generated files")
    assert encoder_of([tmp_path / "c.flac"], lines.append) == (None, None, "default") and not lines
    assert encoder_of([tmp_path / "a.wav", tmp_path / "b.mp4"], lines.append) == (None, None, "default")
    assert "different encoders" in lines[0]
    assert read_tags(tmp_path / "b.mp4") == {"encoder": "ViT-B-32:openai"}


def _tagged(folder, **files):
    """Videos ``NAME.mp4`` and their music ``NAME_music.wav`` tagged ``{"encoder": spec, "encoder_activation": a}``."""
    (folder / "v").mkdir(), (folder / "g").mkdir()
    for name, (spec, activation) in files.items():
        flash_video(folder / "v" / f"{name}.mp4", [0.5, 1.0], 1.5, size=32)
        write_output(folder / "g" / f"{name}_music.wav", torch.zeros(1, 48000), 32000,
                     tags={"encoder": spec, "encoder_activation": activation})
    return ["eval", "--videos", str(folder / "v"), "--generated", str(folder / "g"), "--quiet",
            "--out", str(folder / "r.json")]


@pytest.mark.filterwarnings("ignore:visual encoder 'tiny'.*QuickGELU")  # load_encoder's, on another activation
def test_eval_builds_the_encoder_with_the_recorded_activation(tmp_path):
    # As `generate` builds a legacy adapter's encoder: its spec, with the activation it was trained on
    # (ViT-B-32:openai with GELU; here the offline tiny encoder with QuickGELU).
    argv = _tagged(tmp_path, clip=("tiny", "quick_gelu"))
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["encoder"] == {"spec": "tiny", "activation": "quick_gelu", "source": "recorded in the generated files"}
    # --encoder naming the same spec takes the files' activation too; another spec its own.
    assert cli.main(argv + ["--encoder", "tiny"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["encoder"] == {"spec": "tiny", "activation": "quick_gelu",
                                 "source": "given, activation recorded in the generated files"}


def test_one_encoder_under_two_activations_is_one_line(tmp_path, capsys):
    argv = _tagged(tmp_path, a=("tiny", "gelu"), b=("tiny", "quick_gelu"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vidmusician eval: error: "), err
    assert "'tiny' under different activations (GELU: a_music.wav; QuickGELU: b_music.wav)" in err
    assert "folder of their own" in err and not (tmp_path / "r.json").exists()
