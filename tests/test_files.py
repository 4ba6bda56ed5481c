"""Adapter folders, configs, presets and backbone loading."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import perturb_adapters, random_video_batch, tiny_config
import vidmusician.random_backbones as random_backbones
from vidmusician import VidMusician, attach_adapters
from vidmusician.backbones import load_backbone
from vidmusician.random_backbones import TINY_CODEC, codec_config, export_musicgen, lm_config, random_musicgen
from vidmusician.adapter_files import WEIGHTS_NAME
from vidmusician.cli import main
from vidmusician.config import AdapterConfig, load_preset
from vidmusician.errors import AdapterError, BackboneError, ConfigError
from vidmusician.adapter.wiring import count_adapter_parameters


def predictions(vm, codes, batch):
    out = vm.compute_predictions(codes, batch)
    return out.logits[out.mask]


@pytest.fixture
def saved(tiny, tmp_path):
    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm)
    vm.save_pretrained(tmp_path / "adapter")
    return vm, tmp_path / "adapter"


def test_save_then_load_reproduces_logits_exactly(tiny, saved):
    vm, folder = saved
    codes = torch.randint(0, 400, (2, 4, 30), generator=torch.Generator().manual_seed(0))
    batch = random_video_batch(2, [True, True])
    loaded = VidMusician.from_pretrained(folder, backbone=tiny())
    assert torch.equal(predictions(loaded, codes, batch), predictions(vm, codes, batch))
    fresh = attach_adapters(tiny(), tiny_config(tiny()))  # not loaded: must differ
    assert not torch.equal(predictions(fresh, codes, batch), predictions(vm, codes, batch))


def test_file_holds_only_adapter_tensors(saved, tiny):
    vm, folder = saved
    tensors = load_file(folder / WEIGHTS_NAME)
    assert set(tensors) == set(vm.adapter_state_dict())
    base_keys = set(tiny().lm.state_dict())
    assert not set(tensors) & base_keys
    assert all(k.startswith(("video_inputs.", "transformer.layers.")) for k in tensors)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert list(config) == sorted(config)
    assert config["dim"] == 32 and config["num_layers"] == 4 and config["backbone"] == "tiny"


def test_loading_onto_another_backbone_names_the_difference(saved, tiny):
    _, folder = saved
    with pytest.raises(AdapterError) as err:
        VidMusician.from_pretrained(folder, backbone=tiny(dim=64))
    message = str(err.value)
    assert "\n" not in message and "dim: adapter 32 vs backbone 64" in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_weights_are_a_clear_error(saved, tiny, damage):
    _, folder = saved
    path = folder / WEIGHTS_NAME
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    else:
        path.unlink()
    with pytest.raises(AdapterError, match=WEIGHTS_NAME):
        VidMusician.from_pretrained(folder, backbone=tiny())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused(saved, tiny, value):
    """What a diverged training saves: every sample would be the same noise, whatever the seed."""
    from safetensors.torch import save_file

    _, folder = saved
    tensors = load_file(folder / WEIGHTS_NAME)
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name].clone().view(-1).index_fill_(0, torch.tensor([0]), value).view_as(tensors[name])
    save_file(tensors, folder / WEIGHTS_NAME)
    with pytest.raises(AdapterError) as err:
        VidMusician.from_pretrained(folder, backbone=tiny())
    assert str(err.value) == (f"{folder}: tensor {name} holds NaN or infinite values (the training diverged); "
                              f"use an earlier checkpoint")


def test_a_config_that_is_not_utf8_or_a_weights_file_is_one_line(saved, capsys):
    _, folder = saved
    config = folder / "adapter_config.json"
    config.write_bytes(config.read_text().encode("utf-16"))  # what some editors save
    with pytest.raises(ConfigError, match=r"adapter_config.json: not UTF-8 text; save it as UTF-8 JSON$"):
        AdapterConfig.load(folder)
    other = folder / "model.safetensors"  # a weights file not of an adapter folder (the folder's own is taken for it)
    other.write_bytes((folder / WEIGHTS_NAME).read_bytes())
    assert main(["info", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors: a weights file; give its adapter folder" in err


def test_a_training_run_folder_given_for_its_adapter_names_the_adapter_inside(saved, tiny, capsys):
    """`info runs/stage2` (or --adapter, --init, push) for `runs/stage2/adapter`: the line points at it."""
    _, folder = saved
    run = folder.parent  # holds adapter/, as a training run's OUTPUT does
    assert main(["info", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(
        f"no such file; an adapter folder holds adapter_config.json (this is a training run: its adapter is {folder})")
    with pytest.raises(AdapterError, match=r"\(this is a training run: its adapter is .*adapter\)$"):
        VidMusician.from_pretrained(run, backbone=tiny())
    with pytest.raises(ConfigError, match=r"an adapter folder holds adapter_config.json$"):  # no adapter/ inside
        AdapterConfig.load(folder / "checkpoints")


def backbone_state(musicgen) -> dict:
    """What attaching adapters changes in a MusicGen: its modules (the very objects), hooks and flags."""
    lm = musicgen.lm
    return dict(modules=[(name, id(m), m.training) for name, m in lm.named_modules()],
                requires_grad=[(name, p.requires_grad) for name, p in lm.named_parameters()],
                hooks=[(name, len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in lm.named_modules()
                       if m._forward_pre_hooks or m._forward_hooks],
                video_inputs=hasattr(lm, "video_inputs"))


@pytest.mark.parametrize("damage", ["nan", "shape", "after attaching"])
def test_a_failed_load_leaves_the_backbone_as_it_was(saved, tiny, tmp_path, monkeypatch, damage):
    """The caller's backbone takes a good adapter after a bad one, and makes the same music as a fresh one."""
    import shutil

    from safetensors.torch import save_file

    import vidmusician.model as model

    vm, folder = saved
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    tensors = load_file(bad / WEIGHTS_NAME)
    name = sorted(tensors)[0]
    if damage == "nan":
        tensors[name] = torch.full_like(tensors[name], float("nan"))
    elif damage == "shape":
        tensors[name] = tensors[name][..., :-1].contiguous()
    save_file(tensors, bad / WEIGHTS_NAME)
    wired = []
    wire = model.wire_adapters
    monkeypatch.setattr(model, "wire_adapters", lambda *args: wired.append(1) or wire(*args))
    if damage == "after attaching":
        def refuse(self, state, source):
            raise AdapterError(f"{source}: refused")
        monkeypatch.setattr(model.VidMusician, "load_adapter_state_dict", refuse)
    musicgen = tiny()
    musicgen.lm.transformer.layers[1].train()  # a mode of the caller's that wiring would change
    before = backbone_state(musicgen)
    with pytest.raises(AdapterError, match=f"^{bad}: "):
        VidMusician.from_pretrained(bad, backbone=musicgen)
    assert backbone_state(musicgen) == before
    assert wired == ([] if damage == "nan" else [1])  # weights no backbone takes: refused before attaching
    monkeypatch.undo()
    musicgen.lm.transformer.layers[1].eval()
    video = random_video_batch(1, [True])
    got = VidMusician.from_pretrained(folder, backbone=musicgen).generate(video, duration=0.5, seed=0)
    want = VidMusician.from_pretrained(folder, backbone=tiny()).generate(video, duration=0.5, seed=0)
    assert torch.equal(got, want)


def test_a_failure_after_wiring_takes_the_adapters_out_again(tiny, monkeypatch):
    """attach_adapters, and wiring itself part way, also leave the backbone as it was."""
    import vidmusician.adapter.wiring as wiring
    import vidmusician.model as model

    musicgen = tiny()
    before = backbone_state(musicgen)
    monkeypatch.setattr(model.VidMusician, "set_stage", lambda self, stage: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        attach_adapters(musicgen, tiny_config(musicgen))
    assert backbone_state(musicgen) == before
    monkeypatch.undo()
    layer_adapters = wiring.layer_adapters
    calls = []

    def third_fails(config, i):  # two layers already adapted when it fails
        calls.append(i)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return layer_adapters(config, i)

    monkeypatch.setattr(wiring, "layer_adapters", third_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        attach_adapters(musicgen, tiny_config(musicgen))
    assert backbone_state(musicgen) == before
    monkeypatch.undo()
    attach_adapters(musicgen, tiny_config(musicgen))
    assert backbone_state(musicgen) != before
    wiring.unwire_adapters(musicgen)
    assert backbone_state(musicgen) == before


@pytest.mark.parametrize("file", ["adapter_config.json", WEIGHTS_NAME])
def test_a_path_to_either_file_of_an_adapter_folder_means_the_folder(saved, tiny, tmp_path, capsys, file):
    import vidmusician
    from media import flash_video

    vm, folder = saved
    path = folder / file
    for load in (VidMusician.from_pretrained, vidmusician.load_adapter):
        loaded = load(path, backbone=tiny())
        assert loaded.config == vm.config
        assert all(torch.equal(v, vm.adapter_state_dict()[k]) for k, v in loaded.adapter_state_dict().items())
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["backbone"] == "tiny"
    video = flash_video(tmp_path / "clip.mp4", [0.3], 1.0, size=32)
    assert main(["generate", str(video), "--adapter", str(path), "-o", str(tmp_path / "out.wav"), "-q",
                 "--duration", "0.5"]) == 0, capsys.readouterr().err  # its backbone, 'tiny', read from the folder
    assert (tmp_path / "out.wav").is_file()
    with pytest.raises(AdapterError, match=r"clip.mp4: a file, not an adapter folder; give the folder that holds "):
        VidMusician.from_pretrained(video, backbone=tiny())


def test_load_adapter_is_public():
    import vidmusician
    from vidmusician.model import load_adapter

    assert vidmusician.load_adapter is load_adapter and "load_adapter" in vidmusician.__all__


def test_missing_folder_is_a_clear_error(tmp_path, tiny):
    with pytest.raises(AdapterError, match="adapter folder not found"):
        VidMusician.from_pretrained(tmp_path / "nope", backbone=tiny())


def test_unknown_keys_warn_not_crash(saved, tiny):
    _, folder = saved
    from safetensors.torch import save_file

    tensors = load_file(folder / WEIGHTS_NAME)
    tensors["future.thing"] = torch.zeros(1)
    save_file(tensors, folder / WEIGHTS_NAME)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["future_option"] = 1
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning) as record:
        VidMusician.from_pretrained(folder, backbone=tiny())
    text = " ".join(str(w.message) for w in record)
    assert "future_option" in text and "future.thing" in text


def test_config_round_trip_is_sorted_json(tmp_path):
    config = AdapterConfig(dim=64, num_layers=8, rhythm_rank=None, encoder="tiny")
    config.save(tmp_path / "c.json")
    text = (tmp_path / "c.json").read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert AdapterConfig.load(tmp_path / "c.json") == config
    assert config.rhythm_layers == list(range(6))  # first three quarters by default
    assert config.semantic_layers == list(range(8))
    with pytest.raises(ConfigError, match="out of range"):
        AdapterConfig(num_layers=4, rhythm_layers=[5])


def test_medium_preset_within_paper_budget_and_counts_match_real_modules(tiny):
    counts = count_adapter_parameters(load_preset("musicgen-medium"))
    assert 0 < counts["total"] <= 24_790_000
    musicgen = tiny()
    config = tiny_config(musicgen)
    vm = attach_adapters(musicgen, config)
    real = vm.parameter_counts()
    meta = count_adapter_parameters(config)
    assert (meta["semantic"], meta["rhythm"]) == (real["semantic"], real["rhythm"])


def test_info_cli(saved, capsys):
    expected = count_adapter_parameters(load_preset("musicgen-medium"))
    assert main(["info", "musicgen-medium", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainable_parameters"] == {k: expected[k] for k in ("semantic", "rhythm", "total")}
    assert data["config"]["dim"] == 1536
    assert main(["info", "musicgen-medium"]) == 0
    text = capsys.readouterr().out
    assert "dim 1536, 48 layers" in text and f"{expected['total']:,}" in text
    assert "ViT-B-32:openai (QuickGELU)" in text  # the activation the features are made with
    _, folder = saved  # an adapter folder works as well as a preset name
    assert main(["info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["backbone"] == "tiny"
    assert main(["info", "musicgen-huge"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "unknown preset" in out.err
    for missing in ("./runs/stage2/adapter", "runs/stage2/adapter", str(folder.parent / "nope")):
        assert main(["info", missing]) == 2  # a path, not a preset name
        out = capsys.readouterr()
        assert out.err.count("\n") == 1 and f"{missing}: no such adapter folder; give an adapter folder" in out.err
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(dict(config, future_option=1)))
    assert main(["info", str(folder)]) == 0  # a key of a newer version: one warning line
    err = capsys.readouterr().err
    assert err.startswith("vidmusician info: warning: ") and err.count("\n") == 1 and "future_option" in err


def test_load_backbone_reads_audiocraft_export_despite_weights_only(tiny, tmp_path):
    musicgen = tiny()
    folder = export_musicgen(musicgen, lm_config(32, 4, 4, card=400), codec_config(**TINY_CODEC), tmp_path / "mg")
    # The real files pickle an OmegaConf config: torch>=2.6's default weights_only load refuses them.
    with pytest.raises(Exception, match="[Ww]eights only"):
        torch.load(folder / "state_dict.bin")
    loaded = load_backbone(str(folder), device="cpu")
    assert same_state(musicgen.lm, loaded.lm) and same_state(musicgen.compression_model, loaded.compression_model)
    # The allowance is scoped to the load: a plain torch.load still refuses afterwards.
    with pytest.raises(Exception, match="[Ww]eights only"):
        torch.load(folder / "state_dict.bin")


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_codec_reads_only_the_codec(tiny, tmp_path, monkeypatch):
    from audiocraft.models import builders, loaders

    from vidmusician.backbones import load_codec

    musicgen = tiny()
    folder = export_musicgen(musicgen, lm_config(32, 4, 4, card=400), codec_config(**TINY_CODEC), tmp_path / "mg")
    # Only the LM's config is read (it says how the codec is wrapped), never its model.
    for module, fn in ((builders, "get_lm_model"), (loaders, "load_lm_model")):
        monkeypatch.setattr(module, fn, lambda *a, **k: pytest.fail("the LM was loaded"))
    assert same_state(load_codec(str(folder), device="cpu"), musicgen.compression_model)
    # 'tiny' (and 'random-*', below) give the codec their whole backbones have.
    assert same_state(load_codec("tiny", device="cpu"), musicgen.compression_model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="missing state_dict.bin, compression_state_dict.bin"):
        load_codec(str(tmp_path / "empty"), device="cpu")
    with pytest.raises(BackboneError, match="unknown architecture"):
        load_codec("random-huge")


def test_load_backbone_bad_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="missing state_dict.bin"):
        load_backbone(str(tmp_path / "empty"), device="cpu")


def test_random_backbones_have_the_real_architectures(monkeypatch):
    """The LMs are built by audiocraft's builder on the meta device (shapes, no memory);
    the codec, which they share, is built once and for real."""
    import audiocraft.models.musicgen
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from vidmusician.backbones import load_codec

    build_lm = builders.get_lm_model

    def build_lm_on_meta(cfg):
        cfg.device = "meta"
        with torch.device("meta"):
            return build_lm(cfg)

    monkeypatch.setattr(builders, "get_lm_model", build_lm_on_meta)
    # audiocraft's MusicGen cannot hold a meta LM (it sets up autocast on the LM's device).
    monkeypatch.setattr(audiocraft.models.musicgen, "MusicGen", lambda name, compression_model, lm, max_duration:
                        SimpleNamespace(name=name, compression_model=compression_model, lm=lm))
    # A random codec is a function of its config and seed (seeded k-means): built once per
    # (config, seed), so a load_codec that asked for another one would build another codec.
    codecs, build_codec = {}, random_backbones.build_codec

    def build_codec_once(cfg, seed):
        key = (OmegaConf.to_yaml(cfg), seed)
        if key not in codecs:
            codecs[key] = build_codec(cfg, seed)
        return codecs[key]

    monkeypatch.setattr(random_backbones, "build_codec", build_codec_once)
    real = {"small": (1024, 24, 16), "medium": (1536, 48, 24), "large": (2048, 48, 32)}  # width, layers, heads
    for size, (dim, layers, heads) in real.items():
        musicgen = random_musicgen(size)
        lm = musicgen.lm
        assert all(p.is_meta for p in lm.parameters())
        assert (lm.dim, len(lm.transformer.layers), lm.transformer.layers[0].self_attn.num_heads) == (dim, layers, heads)
        assert (lm.num_codebooks, lm.card, musicgen.compression_model.frame_rate) == (4, 2048, 50)
        assert musicgen.name == f"random-{size}"
        # load_codec gives the codec of the whole backbone.
        assert same_state(load_codec(f"random-{size}", device="cpu"), musicgen.compression_model)
    assert len(codecs) == 1
    # The random codec is informative: noise maps to varied codes in every codebook.
    with torch.no_grad():
        codes = musicgen.compression_model.encode(torch.randn(1, 1, 64000) * 0.3)[0]
    assert all(len(torch.unique(codes[0, k])) > 5 for k in range(4))
    with pytest.raises(BackboneError, match="unknown architecture"):
        random_musicgen("huge")


def test_generate_shows_a_newer_configs_warning_once(saved, tmp_path, capsys):
    from media import flash_video

    _, folder = saved
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(dict(config, future_option=1)))
    video = flash_video(tmp_path / "clip.mp4", [0.3], 1.0, size=32)
    with warnings.catch_warnings(record=True) as escaped:  # shown in Python's own format, with a source line
        warnings.simplefilter("always")
        assert main(["generate", str(video), "--adapter", str(folder), "--backbone", "tiny", "-o",
                     str(tmp_path / "out.wav"), "-q", "--duration", "0.5"]) == 0
    err = capsys.readouterr().err
    warnings_ = [line for line in err.splitlines() if "future_option" in line]
    assert len(warnings_) == 1 and warnings_[0].startswith("vidmusician generate: warning: "), err
    assert [str(w.message) for w in escaped if "future_option" in str(w.message)] == []
