"""The README's "From Python" snippets run as written, on the tiny offline models in the places of
the real ones (no download here)."""

from __future__ import annotations

import os

import pytest
import torch
from test_readme import REPO, blocks

from vidmusician.testing import click_track, flash_video


def from_python(marker: str) -> str:
    """The first Python block after ``marker`` in the README."""
    readme = (REPO / "README.md").read_text()
    return blocks(readme[readme.index(marker):], "python")[0][2]


def test_the_generate_snippet_runs_and_writes_the_music_and_the_video(tiny, tmp_path, monkeypatch):
    """The first block of "From Python", with an adapter of the tiny backbone at 'path/to/adapter'."""
    import av
    from conftest import tiny_config

    from vidmusician.audio_io import read_audio
    from vidmusician.model import attach_adapters

    snippet = from_python("## From Python")
    assert 'adapter="path/to/adapter"' in snippet and 'VidMusician.from_pretrained("path/to/adapter")' in snippet
    monkeypatch.chdir(tmp_path)
    attach_adapters(tiny(), tiny_config(tiny())).save_pretrained("path/to/adapter")
    for name, flashes in (("clip.mp4", [0.5]), ("a.mp4", [0.3]), ("b.mp4", [0.8])):
        flash_video(name, flashes, 1.0)
    names = {}
    exec(compile(snippet, "<README From Python>", "exec"), names)
    wav, sr = names["wav"], names["sr"]
    assert wav.shape[-1] == sr and names["wavs"].shape[:2] == (2, 1)
    music = read_audio("clip_music.wav", sr, 1)
    assert music.shape[-1] == wav.shape[-1] and torch.allclose(music, wav, atol=1e-4)  # 16-bit PCM
    with av.open("clip_scored.mp4") as container:
        assert container.streams.video and container.streams.audio
        assert container.duration / av.time_base == pytest.approx(1.0, abs=0.1)


def test_the_attach_adapters_snippet_runs_on_the_tiny_backbone(tmp_path, monkeypatch, capsys):
    """"Attach adapters to a MusicGen yourself", as written, with the tiny backbone and encoder in the
    places of facebook/musicgen-small and its preset's ViT-B-32 (no download here)."""
    snippet = from_python("Attach adapters to a MusicGen yourself")
    assert 'load_backbone("facebook/musicgen-small")' in snippet and "config_for_backbone(musicgen)" in snippet
    snippet = snippet.replace('load_backbone("facebook/musicgen-small")', 'load_backbone("tiny")')
    snippet = snippet.replace("config_for_backbone(musicgen)", 'config_for_backbone(musicgen, encoder="tiny", '
                                                               'global_dim=32, local_dim=16)')
    monkeypatch.chdir(tmp_path)
    flash_video("clip.mp4", [0.5], 2.0, audio=click_track([0.5, 1.5], 2.0))
    names = {}
    exec(compile(snippet, "<README attach snippet>", "exec"), names)
    out, base = names["out"], names["base_out"]
    semantic = names["vm"].parameter_counts()["semantic"]  # what stage 1 trains: what the snippet prints
    assert capsys.readouterr().out.startswith(f"trainable params: {semantic:,} ||")
    assert out.logits.shape[:3] == (1, names["musicgen"].lm.num_codebooks, names["codes"].shape[-1])
    # Fresh adapters: the base model's logits exactly (where the pattern has a target; NaN elsewhere).
    assert torch.equal(out.mask, base.mask) and torch.equal(out.logits[out.mask], base.logits[base.mask])
    assert sorted(os.listdir("my-adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
