"""What a user runs, end to end, on the real file formats: no stand-in classes on the way.

The miniature hub (tests/hub.py) serves ``facebook/musicgen-small`` as the hub
does: an audiocraft export whose codec file points to ``facebook/encodec_32khz``
(a transformers EncodecModel save) and whose text conditioner is audiocraft's T5
(``t5-base``, tokenizer.json). The visual encoder is an OpenAI-style TorchScript
CLIP archive (tests/clip_files.py). Through them run, as a user types them:
``prepare``, stage 1 and stage 2 with the shipped recipes, ``generate --text`` to
an mp4, and ``features``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_files import ARCH, random_clip, register_arch, write_openai_archive
from hub import hub_cache, offline_hub  # noqa: F401  (pytest fixtures)
from media import flash_video

from vidmusician import cli
from vidmusician.training.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
SECONDS = 2.0


@pytest.fixture
def world(offline_hub, tmp_path):
    """Three music videos and an OpenAI CLIP archive, with the hub offline."""
    register_arch()
    archive = write_openai_archive(tmp_path / "ViT-tiny.pt", random_clip())
    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i, flashes in enumerate(([0.4, 1.2], [0.8], [0.2, 1.0, 1.6])):
        music = 0.1 * rng.standard_normal((1, int(SECONDS * 32000))).astype(np.float32)
        flash_video(videos / f"clip{i}.mp4", flashes, SECONDS, size=48, audio=music)
    return tmp_path, videos, f"{ARCH}:{archive}"


def run_cli(*args: str) -> None:
    assert cli.main([str(a) for a in args]) == 0


def test_prepare_train_both_stages_generate_with_text_and_features(world, capsys):
    tmp, videos, encoder = world
    data = tmp / "data"
    run_cli("prepare", videos, data, "--backbone", "facebook/musicgen-small", "--encoder", encoder,
            "--window", SECONDS, "--hop", SECONDS, "--holdout", 0.34)
    meta = json.loads((data / "dataset.json").read_text())
    # The hub codec (transformers' EncodecModel): 4 codebooks of 2048 at 50 Hz; OpenAI's activation.
    assert (meta["n_q"], meta["card"], meta["frame_rate"], meta["encoder_activation"]) == (4, 2048, 50.0, "quick_gelu")

    short = ["--set", "max_steps=2", "--set", "warmup_steps=1", "--set", "batch_size=1", "--set", "num_workers=0",
             "--set", "eval_every=2", "--set", "save_every=2", "--set", "lr=0.01"]
    stage1, stage2 = tmp / "stage1", tmp / "stage2"
    assert train_main(["--recipe", str(REPO / "recipes" / "stage1_semantic.json"), "--data", str(data),
                       "--output", str(stage1), *short]) == 0
    assert train_main(["--recipe", str(REPO / "recipes" / "stage2_rhythm.json"), "--data", str(data),
                       "--output", str(stage2), "--init", str(stage1 / "adapter"), *short]) == 0
    config = json.loads((stage2 / "adapter" / "adapter_config.json").read_text())
    assert (config["backbone"], config["encoder"], config["encoder_activation"], config["stage"]) == (
        "facebook/musicgen-small", encoder, "quick_gelu", 2)

    out = tmp / "scored.mp4"
    capsys.readouterr()
    run_cli("generate", videos / "clip0.mp4", "--adapter", stage2 / "adapter", "--text", "lo-fi, piano",
            "-o", out, "--seed", "0", "--quiet")
    import av

    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert container.streams.video and audio.duration * audio.time_base == pytest.approx(SECONDS, abs=0.05)
    assert "Traceback" not in capsys.readouterr().err

    feats = tmp / "clip0.features.safetensors"
    run_cli("features", videos / "clip0.mp4", "--encoder", encoder, "-o", feats)
    from vidmusician.video.features import VideoFeatures

    loaded = VideoFeatures.load(feats)
    assert loaded.encoder_activation == "quick_gelu" and loaded.global_feats.shape == (2, 32)


def test_text_steers_the_adapted_hub_model(offline_hub):
    """The T5 text path of the real conditioner still works with adapters attached: text changes the music."""
    from vidmusician.backbones import load_backbone
    from vidmusician.model import attach_adapters

    vm = attach_adapters(load_backbone("facebook/musicgen-small", device="cpu"))
    vm.set_generation_params(use_sampling=False)
    plain = vm.generate([None], texts=[None], duration=0.5, seed=0, return_tokens=True)[1]
    piano = vm.generate([None], texts=["piano"], duration=0.5, seed=0, return_tokens=True)[1]
    assert not torch.equal(plain, piano)


def test_stereo_prepare_train_and_generate(world):
    """musicgen-stereo: 8 interleaved codebooks through prepare and training, stereo music out."""
    import soundfile

    tmp, videos, encoder = world
    data = tmp / "stereo-data"
    run_cli("prepare", videos, data, "--backbone", "facebook/musicgen-stereo-small", "--encoder", encoder,
            "--window", SECONDS, "--hop", SECONDS, "--holdout", 0)
    assert json.loads((data / "dataset.json").read_text())["n_q"] == 8
    run = tmp / "stereo"
    assert train_main(["--recipe", str(REPO / "recipes" / "stage1_semantic.json"), "--data", str(data),
                       "--output", str(run), "--set", "max_steps=1", "--set", "warmup_steps=0",
                       "--set", "batch_size=1", "--set", "num_workers=0"]) == 0
    out = tmp / "stereo.wav"
    run_cli("generate", videos / "clip1.mp4", "--adapter", run / "adapter", "-o", out, "--seed", "0", "--quiet")
    wav, sample_rate = soundfile.read(str(out))
    assert wav.shape == (int(SECONDS * sample_rate), 2) and not np.allclose(wav[:, 0], wav[:, 1])
