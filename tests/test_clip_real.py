"""Real CLIP weight files: the activation each spec form gets, OpenAI's TorchScript archive, and the checks
that features made with one activation never feed an adapter trained on the other.

Every file is written by tests/clip_files.py in the real format (tiny dims, random weights); the pretrained
tag path runs through open_clip's download code against an offline Hugging Face cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import clip_files as cf
import numpy as np
import pytest
import torch
from media import flash_video

from vidmusician.config import CONFIG_NAME, AdapterConfig, load_preset
from vidmusician.training.dataset import META_NAME, DatasetMeta
from vidmusician.video.encoder_specs import resolve_encoder
from vidmusician.video.encoders import load_encoder
from vidmusician.errors import ConfigError, DataError
from vidmusician.video.features import VideoFeatures, extract_features

FRAMES = torch.randint(0, 256, (3, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One set of random CLIP weights in every format: archive, state dicts, open_clip folder."""
    root = tmp_path_factory.mktemp("clip")
    model = cf.random_clip(seed=3)
    return {
        "model": model,
        "archive": cf.write_openai_archive(root / "ViT-tiny.pt", model),
        "safetensors": cf.write_state_dict(root / "clip.safetensors", model),
        "torch_save": cf.write_state_dict(root / "clip.pt", model),
        "folder": cf.write_open_clip_folder(root / "folder", model, {**cf.ARCH_CONFIG, "quick_gelu": True}),
    }


@pytest.fixture
def hub_tag(files, tmp_path, monkeypatch):
    """``vmtest-clip-tiny:openai`` registered like ``ViT-B-32:openai``, its weights in an offline HF cache."""
    cache = cf.offline_hub_cache(monkeypatch, tmp_path / "hf" / "hub")
    cf.register_pretrained_tag(monkeypatch)
    return cf.write_hub_pretrained(cache, files["model"])


def embed(encoder) -> torch.Tensor:
    return encoder.encode(FRAMES)[0]


def gelu_class(model) -> type:
    return type(model.visual.transformer.resblocks[0].mlp.gelu)


# ---- which activation each spec gets -------------------------------------------------------------


def test_openai_tag_config_says_quick_gelu_and_load_encoder_builds_quick_gelu_without_weights(monkeypatch):
    import open_clip
    from open_clip.transformer import QuickGELU

    assert open_clip.get_pretrained_cfg("ViT-B-32", "openai")["quick_gelu"] is True
    assert open_clip.get_model_config("ViT-B-32").get("quick_gelu", False) is False  # the bug's cause
    real, calls = open_clip.create_model, []

    def no_download(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs))
        with torch.device("meta"):  # the real architecture, no weights, no memory
            return real(name, pretrained=None, **{**kwargs, "device": "meta"})

    monkeypatch.setattr(open_clip, "create_model", no_download)
    # Nor the check that the weights could be had: none are downloaded here.
    monkeypatch.setattr("vidmusician.video.encoders.check_weights_available", lambda spec: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder = load_encoder("ViT-B-32:openai", device="meta")
    assert calls == [("ViT-B-32", "openai", {"device": "cpu", "force_quick_gelu": True})]
    assert encoder.activation == "quick_gelu" and isinstance(encoder.model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert (encoder.global_dim, encoder.num_patches) == (512, 49)


@pytest.mark.parametrize("spec, activation", [
    ("ViT-B-32:openai", "quick_gelu"), (None, "quick_gelu"), ("ViT-B-32-quickgelu:openai", "quick_gelu"),
    ("ViT-B-32:laion2b_s34b_b79k", "gelu"), ("ViT-B-32", "gelu"), ("ViT-B-32-quickgelu", "quick_gelu"),
    ("tiny", "gelu"),
])
def test_spec_resolution_without_weights(spec, activation):
    assert resolve_encoder(spec).activation == activation


def test_openai_tag_through_open_clips_download_gets_quick_gelu(hub_tag, files):
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # open_clip's QuickGELU-mismatch warning would fail here
        encoder = load_encoder(f"{cf.ARCH}:{cf.TAG}", device="cpu")
    assert encoder.activation == "quick_gelu"
    reference = open_clip.create_model(cf.ARCH_QUICKGELU, pretrained=str(hub_tag)).visual
    with torch.inference_mode():
        expected = reference(encoder.preprocess(FRAMES))
    torch.testing.assert_close(embed(encoder), expected, rtol=0, atol=1e-6)
    # What open_clip builds when not told: GELU, the features every earlier run computed.
    with pytest.warns(UserWarning, match="QuickGELU mismatch"):
        plain = open_clip.create_model(cf.ARCH, pretrained=cf.TAG)
    assert gelu_class(plain) is torch.nn.GELU


def test_tag_built_with_the_other_activation_warns_once_in_our_words(hub_tag):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder = load_encoder(f"{cf.ARCH}:{cf.TAG}", device="cpu", activation="gelu")
    assert encoder.activation == "gelu"
    assert [str(w.message).split(":")[0] for w in caught] == [f"visual encoder '{cf.ARCH}"]  # not open_clip's


def test_openai_archive_loads_and_equals_the_quickgelu_state_dict(files):
    import open_clip

    with pytest.raises(RuntimeError, match="weights_only"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what `NAME:/path/ViT-B-32.pt` used to run into: torch.load refuses it
        open_clip.create_model(cf.ARCH, pretrained=str(files["archive"]))
    archive = load_encoder(f"{cf.ARCH}:{files['archive']}", device="cpu")
    state = load_encoder(f"{cf.ARCH_QUICKGELU}:{files['safetensors']}", device="cpu")
    assert archive.activation == state.activation == "quick_gelu"
    torch.testing.assert_close(embed(archive), embed(state), rtol=0, atol=1e-6)
    # The archive is read the way open_clip's OpenAI loader reads OpenAI's real file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        openai = open_clip.load_openai_model(str(files["archive"]), precision="fp32", device="cpu")
    with torch.inference_mode():
        torch.testing.assert_close(openai.visual(archive.preprocess(FRAMES)), embed(archive), rtol=0, atol=1e-6)


def test_archive_keys_and_dtypes_are_openais(files):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        state = torch.jit.load(str(files["archive"])).state_dict()
    assert {"input_resolution", "context_length", "vocab_size", "visual.proj", "text_projection",
            "visual.transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight"} <= set(state)
    assert state["visual.conv1.weight"].dtype == torch.float16 and state["visual.ln_pre.weight"].dtype == torch.float32


def test_local_state_dict_follows_the_name(files):
    plain = load_encoder(f"{cf.ARCH}:{files['torch_save']}", device="cpu")  # a torch.save zip is no archive
    quick = load_encoder(f"{cf.ARCH_QUICKGELU}:{files['torch_save']}", device="cpu")
    assert (plain.activation, quick.activation) == ("gelu", "quick_gelu")
    assert not torch.allclose(embed(plain), embed(quick), atol=1e-4)
    folder = load_encoder(str(files["folder"]), device="cpu")  # the folder's config says quick_gelu
    assert folder.activation == "quick_gelu"
    torch.testing.assert_close(embed(folder), embed(quick), rtol=0, atol=1e-6)


def test_archive_with_another_architectures_name_is_refused(files):
    with pytest.raises(ConfigError, match=r"archive holds a ViT of width 64.*ViT-B-32 is one of width 768"):
        load_encoder(f"ViT-B-32:{files['archive']}", device="cpu")


# ---- the activation travels with the features ---------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return flash_video(tmp_path_factory.mktemp("v") / "flash.mp4", [1.0], 2.0, fps=25, size=32)


def test_features_file_and_cache_key_carry_the_activation(files, video, tmp_path):
    from safetensors import safe_open

    spec = f"{cf.ARCH}:{files['archive']}"
    quick = extract_features(video, spec, cache_dir=tmp_path / "cache", device="cpu")
    assert quick.encoder_activation == "quick_gelu"
    path = quick.save(tmp_path / "f.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["encoder_activation"] == "quick_gelu"
    assert VideoFeatures.load(path).encoder_activation == "quick_gelu"
    # Same spec and video, the other activation: another cache entry, other features.
    with pytest.warns(UserWarning, match="built with GELU"):
        gelu_encoder = load_encoder(spec, device="cpu", activation="gelu")
    gelu = extract_features(video, gelu_encoder, cache_dir=tmp_path / "cache")
    assert gelu.encoder_activation == "gelu" and len(list((tmp_path / "cache").iterdir())) == 2
    assert not torch.allclose(gelu.global_feats, quick.global_feats, atol=1e-4)
    # A file written before the activation was recorded still loads (None: the legacy activation).
    from safetensors.torch import save_file

    save_file({"global": quick.global_feats, "local": quick.local_feats}, str(tmp_path / "old.safetensors"),
              metadata={"global_fps": "1.0", "local_fps": "25.0", "duration": "2.0", "encoder": "ViT-B-32:openai"})
    assert VideoFeatures.load(tmp_path / "old.safetensors").encoder_activation is None


def test_prepare_records_the_activation_and_old_datasets_load_with_the_legacy_one(files, tmp_path):
    from vidmusician.training.prepare import prepare

    src = tmp_path / "src"
    src.mkdir()
    noise = np.random.default_rng(0).uniform(-0.8, 0.8, 64000).astype(np.float32)
    flash_video(src / "a.mp4", [1.0], 2.0, size=32, audio=noise)
    out = tmp_path / "ds"
    spec = f"{cf.ARCH}:{files['archive']}"
    report = prepare(src, out, backbone="tiny", encoder=spec, window=2.0, hop=2.0, holdout=0.0, progress=False,
                     device="cpu")
    assert report.prepared == 1
    assert json.loads((out / META_NAME).read_text())["encoder_activation"] == "quick_gelu"
    assert DatasetMeta.load(out).encoder_activation == "quick_gelu"
    # Prepared before the activation was recorded: what open_clip's config for the name gave (GELU).
    data = json.loads((out / META_NAME).read_text())
    del data["encoder_activation"]
    (out / META_NAME).write_text(json.dumps(data))
    assert DatasetMeta.load(out).encoder_activation == "gelu"
    # ... so resuming it with the QuickGELU encoder is refused, not mixed.
    flash_video(src / "b.mp4", [1.0], 2.0, size=32, audio=noise)
    with pytest.raises(DataError, match="encoder_activation: gelu vs quick_gelu"):
        prepare(src, out, backbone="tiny", encoder=spec, window=2.0, hop=2.0, holdout=0.0, progress=False,
                device="cpu")


def test_adapter_config_activation_defaults(tmp_path):
    assert AdapterConfig().encoder_activation is None  # fresh: the encoder's own
    assert load_preset("musicgen-small").encoder_activation is None
    data = json.loads(AdapterConfig(encoder="ViT-B-32:openai", dim=256, num_layers=2).to_json())
    del data["encoder_activation"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    # Written before the activation was recorded: the GELU those versions built for ViT-B-32:openai.
    assert AdapterConfig.load(tmp_path).encoder_activation == "gelu"
    data["encoder"] = "ViT-B-32-quickgelu:/elsewhere/weights.pt"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    assert AdapterConfig.load(tmp_path).encoder_activation == "quick_gelu"
    saved = AdapterConfig(encoder="tiny", encoder_activation="quick_gelu", dim=256, num_layers=2)
    saved.save(tmp_path / CONFIG_NAME)
    assert AdapterConfig.load(tmp_path).encoder_activation == "quick_gelu"


# ---- features with another activation than the adapter's are refused ----------------------------


@pytest.fixture(scope="module")
def adapted(files):
    """A tiny MusicGen with adapters trained (say) on QuickGELU features of the archive encoder."""
    from conftest import tiny_config

    from vidmusician.random_backbones import tiny_musicgen
    from vidmusician.model import attach_adapters

    musicgen = tiny_musicgen()
    spec = f"{cf.ARCH}:{files['archive']}"
    return attach_adapters(musicgen, tiny_config(musicgen, encoder=spec, encoder_activation="quick_gelu"))


def features_of(video, encoder) -> VideoFeatures:
    return extract_features(video, encoder, device="cpu")


def test_generate_refuses_features_made_with_the_other_activation(adapted, files, video):
    spec = adapted.config.encoder
    with pytest.warns(UserWarning, match="built with GELU"):
        gelu = features_of(video, load_encoder(spec, device="cpu", activation="gelu"))
    with pytest.raises(ConfigError, match=r"^video features: features made with GELU .* trained on QuickGELU") as err:
        adapted.generate([gelu], duration=0.5)
    assert "\n" not in str(err.value)
    # Unrecorded activation of a ViT-B-32:openai file: the GELU those versions computed.
    old = VideoFeatures(gelu.global_feats, gelu.local_feats, 1.0, 25.0, 2.0, "ViT-B-32:openai")
    with pytest.raises(ConfigError, match="made with GELU"):
        adapted.generate([old], duration=0.5)
    quick = features_of(video, spec)
    assert adapted.generate([quick], duration=0.5).shape[0] == 1


def test_legacy_adapter_gets_the_activation_it_was_trained_on_with_a_warning(adapted, files, video):
    from vidmusician.generation.windows import set_encoder

    spec = adapted.config.encoder
    adapted.config.encoder_activation = "gelu"  # as an adapter folder from before loads
    try:
        with pytest.warns(UserWarning, match=r"built with GELU as the adapter's features were.*trained with QuickGELU"):
            encoder = set_encoder(adapted, spec)
        assert encoder.activation == "gelu"
        with pytest.raises(ConfigError, match="made with QuickGELU"):  # a QuickGELU encoder of another name
            set_encoder(adapted, f"{cf.ARCH_QUICKGELU}:{files['safetensors']}")
    finally:
        adapted.config.encoder_activation = "quick_gelu"
        adapted.encoder = None


def test_training_refuses_a_dataset_of_the_other_activation(adapted, tmp_path):
    from vidmusician.training.model_setup import build_model
    from vidmusician.training.recipe import Recipe
    from vidmusician.training.train import parse_args

    init = tmp_path / "init"
    adapted.save_pretrained(init)
    spec = adapted.config.encoder
    meta = DatasetMeta("tiny", 32000, 1, 50.0, 4, 400, spec, 32, 16, 1.0, 25.0, 2.0, 2.0, encoder_activation="gelu")
    args = parse_args(["--recipe", "r.json", "--data", str(tmp_path / "ds"), "--output", str(tmp_path / "o"),
                       "--backbone", "tiny", "--init", str(init)])
    with pytest.raises(DataError, match=r"ds: features made with GELU .* trained on QuickGELU features"):
        build_model(args, Recipe(), meta, "cpu")
    meta.encoder_activation = "quick_gelu"
    assert build_model(args, Recipe(), meta, "cpu").config.encoder_activation == "quick_gelu"
    args.init = None  # a fresh adapter records the dataset's activation
    meta.encoder_activation = "gelu"
    assert build_model(args, Recipe(), meta, "cpu").config.encoder_activation == "gelu"


# ---- no raw open_clip warning on the command line ------------------------------------------------

# In one child process (imports cost seconds): registers the test tag as the fixture does, then runs
# the real CLI once per argument list, a marker line on stderr after each.
_CLI = """
import json, sys, clip_files as cf
from open_clip import pretrained
from vidmusician.cli import main
cf.register_arch()
cfg = dict(pretrained.get_pretrained_cfg("ViT-B-32", "openai"), url="", hf_hub=cf.HUB_REPO + "/")
for name in (cf.ARCH, cf.ARCH_QUICKGELU):
    pretrained._PRETRAINED[name] = {cf.TAG: cfg}
for argv in json.loads(sys.argv[1]):
    assert main(argv) == 0
    print("-- done", file=sys.stderr, flush=True)
"""


def test_features_cli_stderr_has_no_raw_warnings(hub_tag, video, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    runs = [["features", str(video), "-o", str(tmp_path / f"{i}.safetensors"), "--encoder", spec, "-q"]
            for i, spec in enumerate([f"{cf.ARCH}:{cf.TAG}", cf.ARCH])]
    proc = subprocess.run([sys.executable, "-c", _CLI, json.dumps(runs)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    tag_run, random_run, rest = proc.stderr.split("-- done\n")
    # The pretrained tag: open_clip's QuickGELU-mismatch warning would have been here.
    assert tag_run == "" and rest == ""
    assert "encoder vmtest-clip-tiny:openai (QuickGELU)" in proc.stdout
    # Random weights: our one-line warning, and not open_clip's "initialized randomly" log line.
    assert random_run.startswith("vidmusician features: warning: visual encoder 'vmtest-clip-tiny': no weights given")
    assert random_run.count("\n") == 1, random_run


def test_prepare_cli_warns_in_one_line_of_ours(tmp_path, capsys):
    from vidmusician.cli import main

    cf.register_arch()
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.mp4").write_bytes(b"not a video")  # the encoder loads, then the file is skipped
    argv = ["prepare", str(src), str(tmp_path / "ds"), "--backbone", "tiny", "--encoder", cf.ARCH, "--device", "cpu"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "UserWarning" not in err and ".py:" not in err
    assert [line for line in err.splitlines() if "warn" in line.lower()] == [
        f"vidmusician prepare: warning: visual encoder '{cf.ARCH}': no weights given, using random weights "
        "(use NAME:TAG)"]
