"""Real MusicGen loading paths on miniature hub repositories (tests/hub.py), offline.

The real code paths run: audiocraft's ``MusicGen.get_pretrained`` through
``hf_hub_download``, the codec through transformers' ``EncodecModel`` or an
audiocraft export, T5 through transformers, stereo wrapping, melody refusal.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
import torch
from hub import (FINETUNE, MELODY, MUSICGEN, SPIECE_T5, STEREO, hub_cache, offline_hub,  # noqa: F401 (fixtures)
                 put_repo)
from media import flash_video, write_audio

from vidmusician import cli
from vidmusician.backbones import backbone_spec, load_backbone, load_codec
from vidmusician.errors import BackboneError


def snapshot(cache, repo_id):
    """The folder of ``repo_id``'s files in the miniature cache."""
    (snap,) = (cache / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir()
    return snap


def saved_lm_state(cache, repo_id):
    from vidmusician.backbones import audiocraft_checkpoint_globals

    with audiocraft_checkpoint_globals():
        return torch.load(snapshot(cache, repo_id) / "state_dict.bin", map_location="cpu")["best_state"]


def same_state(module, state) -> bool:
    own = module.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in own)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_musicgen_small_loads_the_hub_codec_and_the_real_t5(offline_hub):
    from audiocraft.models.encodec import HFEncodecCompressionModel
    from audiocraft.modules.conditioners import T5Conditioner

    musicgen = load_backbone(MUSICGEN, device="cpu")
    # compression_state_dict.bin only points at facebook/encodec_32khz: transformers' EncodecModel.
    assert type(musicgen.compression_model) is HFEncodecCompressionModel
    assert type(musicgen.lm.condition_provider.conditioners["description"]) is T5Conditioner
    assert same_state(musicgen.lm, saved_lm_state(offline_hub, MUSICGEN))
    spec = backbone_spec(musicgen)
    assert (spec.name, spec.n_q, spec.card, spec.frame_rate, spec.sample_rate, spec.channels) == (
        MUSICGEN, 4, 2048, 50.0, 32000, 1)


def test_finetune_under_any_hub_name_loads_with_its_audiocraft_encodec(offline_hub):
    from audiocraft.models.encodec import EncodecModel
    from audiocraft.modules.conditioners import T5Conditioner

    musicgen = load_backbone(FINETUNE, device="cpu")
    # A full EnCodec export (xp.cfg a YAML string, as audiocraft's export writes it).
    assert type(musicgen.compression_model) is EncodecModel
    assert type(musicgen.lm.condition_provider.conditioners["description"]) is T5Conditioner
    assert same_state(musicgen.lm, saved_lm_state(offline_hub, FINETUNE)) and musicgen.name == FINETUNE
    assert type(load_codec(FINETUNE, device="cpu")) is EncodecModel


def test_t5_text_conditioning_changes_the_logits(offline_hub):
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = load_backbone(MUSICGEN, device="cpu").lm
    codes = torch.randint(2048, (1, 4, 20), generator=torch.Generator().manual_seed(0))

    def logits(text):
        with torch.no_grad():
            return lm.compute_predictions(codes, [ConditioningAttributes(text={"description": text})]).logits

    piano, drums, none = logits("calm piano"), logits("upbeat rock drums"), logits(None)
    valid = ~torch.isnan(piano)
    assert valid.any()
    assert not torch.allclose(piano[valid], none[valid]) and not torch.allclose(piano[valid], drums[valid])


def test_stereo_backbone_and_codec_have_8_codebooks_and_2_channels(offline_hub):
    codec = load_codec(STEREO, device="cpu")
    assert (codec.num_codebooks, codec.channels, codec.frame_rate) == (8, 2, 50)
    musicgen = load_backbone(STEREO, device="cpu")
    spec = backbone_spec(musicgen)
    assert (spec.n_q, spec.channels) == (8, 2)
    with torch.no_grad():
        codes, _ = codec.encode(torch.randn(1, 2, 32000) * 0.3)
    assert codes.shape == (1, 8, 50)


def test_prepare_with_a_stereo_backbone_writes_8_codebook_codes(offline_hub, tmp_path):
    from vidmusician.training.dataset import PreparedDataset

    rng = np.random.default_rng(0)
    write_audio(tmp_path / "music.wav", rng.uniform(-0.8, 0.8, (2, 64000)).astype(np.float32))
    flash_video(tmp_path / "clip.mp4", [1.0], 2.0)
    (tmp_path / "pairs.csv").write_text("video,audio\nclip.mp4,music.wav\n")
    out = tmp_path / "data"
    assert cli.main(["prepare", str(tmp_path / "pairs.csv"), str(out), "--backbone", STEREO, "--encoder", "tiny",
                     "--window", "2", "--hop", "2", "--holdout", "0", "--device", "cpu"]) == 0
    data = PreparedDataset(out)
    assert (data.meta.n_q, data.meta.channels) == (8, 2)
    codes = data[0].codes
    assert codes.shape == (8, 100)
    # Two different channels interleaved: the left and right codebooks differ.
    assert not torch.equal(codes[0::2], codes[1::2])


def recorded_downloads(monkeypatch):
    """Records every hf_hub_download (vidmusician's and audiocraft's) and lets it through."""
    import huggingface_hub
    from audiocraft.models import loaders

    calls, real = [], huggingface_hub.hf_hub_download

    def recording(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return real(repo_id=repo_id, filename=filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording)
    monkeypatch.setattr(loaders, "hf_hub_download", recording)
    return calls


def test_melody_is_refused_from_its_config_before_any_weights(offline_hub, monkeypatch):
    from audiocraft.models import builders

    calls = recorded_downloads(monkeypatch)
    monkeypatch.setattr(builders, "get_lm_model", lambda *a, **k: pytest.fail("the LM was built"))
    for load in (load_backbone, load_codec):
        with pytest.raises(BackboneError) as exc:
            load(MELODY, device="cpu")
        assert "prepend" in one_line(exc) and MELODY in str(exc.value)
    assert calls == [(MELODY, "config.json")] * 2  # its config only, no weights
    assert "demucs" not in sys.modules


def test_melody_export_without_transformers_config_is_refused_from_xp_cfg(offline_hub, monkeypatch, tmp_path):
    from audiocraft.models import builders

    monkeypatch.setattr(builders, "get_lm_model", lambda *a, **k: pytest.fail("the LM was built"))
    local = tmp_path / "melody-finetune"
    local.mkdir()
    for name in ("state_dict.bin", "compression_state_dict.bin"):
        shutil.copyfile(snapshot(offline_hub, MELODY) / name, local / name)
    put_repo(offline_hub, "someone/melody-finetune", local)
    for name in (str(local), "someone/melody-finetune"):
        with pytest.raises(BackboneError) as exc:
            load_backbone(name, device="cpu")
        assert "prepend" in one_line(exc)


def test_melody_on_the_command_line_is_one_line_and_exit_2(offline_hub, tmp_path, capsys):
    flash_video(tmp_path / "clip.mp4", [1.0], 2.0, audio=np.zeros(64000, np.float32))
    code = cli.main(["prepare", str(tmp_path), str(tmp_path / "data"), "--backbone", MELODY, "--encoder", "tiny",
                     "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "prepend" in err


def test_missing_folders_and_uncached_hub_names_are_one_line(offline_hub, tmp_path):
    for name in (str(tmp_path / "nowhere"), "./nowhere", "nowhere", "../runs/export/mg"):
        with pytest.raises(BackboneError) as exc:
            load_backbone(name, device="cpu")
        assert "no such folder" in one_line(exc) and name in str(exc.value)
    for load in (load_backbone, load_codec):
        with pytest.raises(BackboneError) as exc:
            load("someone/not-downloaded", device="cpu")
        assert "not in the Hugging Face cache" in one_line(exc) and "HF_HUB_OFFLINE" in str(exc.value)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "state_dict.bin").write_bytes(b"")
    with pytest.raises(BackboneError) as exc:
        load_backbone(str(tmp_path / "half"), device="cpu")
    assert "missing compression_state_dict.bin" in one_line(exc)
    (tmp_path / "half" / "compression_state_dict.bin").write_bytes(b"")
    for garbage in (b"", b"not a checkpoint"):
        (tmp_path / "half" / "state_dict.bin").write_bytes(garbage)
        with pytest.raises(BackboneError) as exc:
            load_codec(str(tmp_path / "half"), device="cpu")
        assert "could not load the MusicGen config" in one_line(exc)


def test_a_t5_with_only_spiece_model_loads(offline_hub):
    from audiocraft.modules.conditioners import T5Conditioner

    assert sorted(os.listdir(snapshot(offline_hub, SPIECE_T5))) == ["config.json", "model.safetensors",
                                                                    "spiece.model"]
    t5 = T5Conditioner(SPIECE_T5, output_dim=32, finetune=False, device="cpu")
    inputs = t5.tokenize(["calm piano", "upbeat jazz guitar"])
    ids = inputs["input_ids"]
    assert (ids[:, 0] != 2).all() and (ids == 1).sum() == 2  # known words, one </s> each
    embeds, mask = t5(inputs)
    assert embeds.shape[:2] == ids.shape and embeds.shape[-1] == 32


def test_adapters_attach_and_generate_with_text_and_video_on_the_hub_model(offline_hub, tmp_path):
    from conftest import tiny_config

    from vidmusician.model import attach_adapters

    musicgen = load_backbone(MUSICGEN, device="cpu")
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    clip = flash_video(tmp_path / "clip.mp4", [0.2], 0.6)
    wav, tokens = vm.generate([clip], texts=["calm piano"], duration=0.5, seed=3, return_tokens=True)
    assert tokens.shape == (1, 4, 25) and wav.shape[:2] == (1, 1) and torch.isfinite(wav).all()


# No xformers banner on the command line: test_odd_names runs each command in a fresh process
# (`info` on an adapter folder among them) and checks its stderr.


@pytest.mark.parametrize("error, message", [("RepositoryNotFoundError", "nor a model on the Hugging Face Hub"),
                                            ("RemoteEntryNotFoundError", "has no state_dict.bin")])
def test_hub_answers_become_one_line(offline_hub, monkeypatch, error, message):
    """What the Hub answers online (no such repository, no such file), simulated: one line each."""
    import httpx2
    import huggingface_hub
    from huggingface_hub import errors

    def answer(repo_id, filename, **kwargs):
        response = httpx2.Response(404, request=httpx2.Request("GET", f"https://huggingface.co/{repo_id}"))
        raise getattr(errors, error)(f"404 Client Error for {filename}\nmore lines", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", answer)
    with pytest.raises(BackboneError) as exc:
        load_backbone("someone/elsewhere", device="cpu")
    assert message in one_line(exc) and "someone/elsewhere" in str(exc.value)


def test_an_unreachable_hub_loads_the_cached_backbone_at_once(offline_hub, monkeypatch, caplog):
    """Not offline, but nothing answers: the cached backbone loads, an uncached one is one line, no retries."""
    import logging

    import huggingface_hub.constants as constants
    from vidmusician.errors import BackboneError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    caplog.set_level(logging.INFO, logger="huggingface_hub")
    musicgen = load_backbone(MUSICGEN, device="cpu")
    assert same_state(musicgen.lm, saved_lm_state(offline_hub, MUSICGEN))
    with pytest.raises(BackboneError) as exc:
        load_backbone("someone/absent-musicgen", device="cpu")
    assert "is not in the Hugging Face cache (the Hub could not be reached)" in one_line(exc)
    assert "Retrying" not in caplog.text and constants.HF_HUB_OFFLINE is False
