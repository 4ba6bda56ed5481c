"""`eval` scores with the visual encoder the music was made with, and says which it used."""

from __future__ import annotations

import json

import torch
from conftest import tiny_config
from media import flash_video

from vidmusician import cli
from vidmusician.audio_io import read_tags, write_output


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
    assert encoder_of([tmp_path / "a.wav", tmp_path / "c.flac"], lines.append) == ("tiny", "recorded in the generated files")
    assert encoder_of([tmp_path / "c.flac"], lines.append) == (None, "default") and not lines
    assert encoder_of([tmp_path / "a.wav", tmp_path / "b.mp4"], lines.append) == (None, "default")
    assert "different encoders" in lines[0]
    assert read_tags(tmp_path / "b.mp4") == {"encoder": "ViT-B-32:openai"}
