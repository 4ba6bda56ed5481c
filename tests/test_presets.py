"""What training builds is what the presets promise; the training dtype policy.

The real architectures are built on the meta device (no memory, no weights) by
audiocraft's own builder, so the counts are those of the real models at no cost.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch

from vidmusician.config import AdapterConfig, load_preset, preset_names
from vidmusician.training.dataset import DatasetMeta
from vidmusician.adapter.wiring import count_adapter_parameters
from vidmusician.model import attach_adapters
from vidmusician.training.model_setup import build_model, fresh_config
from vidmusician.training.recipe import Recipe

README = Path(__file__).resolve().parents[1] / "README.md"
SIZES = ("small", "medium", "large")


def meta_backbone(name: str, size: str):
    """A MusicGen of a real LM architecture (t5-base text encoder) on the meta device, with the real codec's rates."""
    from audiocraft.models import builders

    from vidmusician.random_backbones import ARCHITECTURES, lm_config
    from vidmusician.adapter.t5 import T5_BASE, attach_random_t5

    with torch.device("meta"):
        lm = builders.get_lm_model(lm_config(**ARCHITECTURES[size], card=2048, device="meta")).eval()
    attach_random_t5(lm, "t5-base", T5_BASE, device="meta")  # the released models' text encoder
    codec = types.SimpleNamespace(frame_rate=50, sample_rate=32000, channels=1)
    return types.SimpleNamespace(name=name, lm=lm, compression_model=codec)


def dataset_meta(**fields) -> DatasetMeta:
    values = dict(backbone="tiny", sample_rate=32000, channels=1, frame_rate=50.0, n_q=4, card=400,
                  encoder="tiny", global_dim=32, local_dim=16, global_fps=1.0, local_fps=25.0, window=4.0, hop=4.0)
    values.update(fields)
    return DatasetMeta(**values)


def without_version(config: AdapterConfig) -> dict:
    data = config.to_dict()
    data.pop("version")
    return data


@pytest.fixture(scope="module")
def medium_and_large():
    return {size: meta_backbone(f"facebook/musicgen-{size}", size) for size in ("medium", "large")}


@pytest.mark.parametrize("size", ["medium", "large"])
def test_fresh_training_adapter_is_the_preset(medium_and_large, size):
    musicgen = medium_and_large[size]
    meta = dataset_meta(backbone=musicgen.name, frame_rate=50.0, n_q=4, card=2048, encoder="ViT-B-32:openai",
                        global_dim=512, local_dim=49, window=30.0, hop=30.0)
    config = fresh_config(musicgen, meta, Recipe(stage=1))
    preset = load_preset(f"musicgen-{size}")
    assert without_version(config) == without_version(preset)
    vm = attach_adapters(musicgen, config)
    counts = vm.parameter_counts()
    expected = count_adapter_parameters(preset)
    assert (counts["semantic"], counts["rhythm"], counts["adapters"]) == (
        expected["semantic"], expected["rhythm"], expected["total"])
    # The paper's whole adapter is 24.79M for medium.
    assert size != "medium" or expected["total"] <= 24.79e6


def test_recipe_overrides_go_on_top_of_the_preset(medium_and_large):
    musicgen = medium_and_large["medium"]
    config = fresh_config(musicgen, dataset_meta(), Recipe(adapter={"attn_dim": 128, "rhythm_rank": 16}))
    assert (config.attn_dim, config.rhythm_rank, config.attn_heads) == (128, 16, 4)
    assert (config.encoder, config.global_dim, config.local_dim) == ("tiny", 32, 16)  # the dataset's encoder


def test_a_fine_tuned_export_gets_its_architectures_preset(medium_and_large):
    lm = medium_and_large["medium"].lm
    finetune = types.SimpleNamespace(name="someone/musicgen-finetune", lm=lm,
                                     compression_model=medium_and_large["medium"].compression_model)
    config = AdapterConfig.for_backbone(finetune)
    assert config.backbone == "someone/musicgen-finetune"
    assert without_version(config) == dict(without_version(load_preset("musicgen-medium")),
                                           backbone="someone/musicgen-finetune")


def test_a_backbone_without_a_preset_gets_the_defaults(tiny):
    config = AdapterConfig.for_backbone(tiny())
    assert (config.dim, config.attn_dim) == (32, AdapterConfig.attn_dim)


@pytest.mark.parametrize("size", SIZES)
def test_stereo_presets_are_the_mono_ones_for_the_stereo_backbone(size):
    stereo, mono = load_preset(f"musicgen-stereo-{size}"), load_preset(f"facebook/musicgen-{size}")
    assert stereo.backbone == f"facebook/musicgen-stereo-{size}"
    assert dict(without_version(stereo), backbone=mono.backbone) == without_version(mono)
    spec = meta_backbone(stereo.backbone, "small") if size == "small" else None
    if spec is not None:  # found by name, not by architecture (which would give the mono preset)
        assert AdapterConfig.for_backbone(spec).backbone == stereo.backbone


def test_counts_from_shapes_are_the_built_modules_counts():
    """count_adapter_parameters (shapes only, what `info` prints) against the modules wire_adapters builds."""
    from vidmusician.adapter.build import built_parameter_counts

    configs = [load_preset(name) for name in preset_names()]
    small = load_preset("musicgen-small")
    configs += [small.replace(semantic_encoder="linear", t5=None), small.replace(rhythm_rank=None),
                small.replace(rhythm_layers=[], semantic_layers=[3], lora_rank=3, memory_dim=40),
                small.replace(t5=dict(small.t5, num_heads=4, d_kv=32, num_layers=2))]
    for config in configs:
        assert count_adapter_parameters(config) == built_parameter_counts(config), config


def test_activations_known_without_open_clip_are_open_clip_s():
    from vidmusician.video.encoder_specs import KNOWN_ACTIVATIONS, resolve_encoder

    assert {spec: resolve_encoder(spec).trained_with for spec in KNOWN_ACTIVATIONS} == KNOWN_ACTIVATIONS


def test_readme_table_matches_the_presets():
    rows = dict(re.findall(r"^\| (musicgen-[\w-]+) \| (.+) \|$", README.read_text(), re.M))
    assert set(rows) == set(preset_names())
    for name, cells in rows.items():
        counts = count_adapter_parameters(load_preset(name))
        shown = [float(m) for m in re.findall(r"([\d.]+)M", cells)[:3]]
        assert shown == [round(counts[g] / 1e6, 2) for g in ("semantic", "rhythm", "total")], name


def test_training_holds_the_backbone_in_float32_under_autocast(tiny, monkeypatch):
    """audiocraft's loader returns a float16 LM on GPU; training must not back-propagate through it."""
    import vidmusician.training.model_setup as model_setup
    from conftest import random_video_batch

    from vidmusician.training.objective import Objective

    def half_precision_loader(name, device=None):
        musicgen = tiny()
        musicgen.lm.half()  # what audiocraft's loader does on any non-CPU device
        return musicgen

    monkeypatch.setattr(model_setup, "load_backbone", half_precision_loader)
    args = types.SimpleNamespace(backbone="tiny", init=None, data="data")
    recipe = Recipe(stage=2, adapter={"memory_dim": 32, "attn_dim": 16, "attn_heads": 2}, gradient_checkpointing=False)
    vm = build_model(args, recipe, dataset_meta(), "cpu")
    assert {p.dtype for p in vm.lm.parameters()} == {torch.float32}

    # One step under bf16 autocast (what --mixed-precision bf16 runs): fp32 gradients on every adapter.
    codes = torch.randint(0, 400, (2, 4, 50), generator=torch.Generator().manual_seed(0))
    videos = random_video_batch(2, [True, True], num_frames=50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sums, counts = Objective(vm)(codes, torch.ones(2, 50, dtype=torch.bool), videos, [None, None])
    (sums / counts).mean().backward()
    grads = [p.grad for p in vm.trainable_parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_a_schedule_that_never_reaches_its_learning_rate_warns(tmp_path, capsys):
    from vidmusician.training.recipe import lr_factor, schedule_warning

    assert schedule_warning(Recipe(max_steps=20, warmup_steps=2)) is None
    assert lr_factor(2, Recipe(max_steps=20, warmup_steps=2)) == pytest.approx(1.0)
    message = schedule_warning(Recipe(max_steps=20, warmup_steps=500, lr=1e-4))
    assert "warmup_steps 500 >= max_steps 20" in message and "peaks at 4e-06" in message
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"stage": 1, "max_steps": 20, "batch_size": 2}')
    assert said_before_training(recipe, tmp_path, capsys) == [message]


def said_before_training(recipe: Path, tmp_path: Path, capsys) -> list[str]:
    """The warnings the trainer says about ``recipe`` once its checks pass (on a prepared dataset), before it
    builds a model; where a check stops the run (a missing dataset), it says the error alone."""
    from test_damage import random_dataset

    from vidmusician.training.preflight import check_start
    from vidmusician.training.train import main, parse_args

    capsys.readouterr()
    args = ["--recipe", str(recipe), "--output", str(tmp_path / "run")]
    assert main([*args, "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vidmusician.training.train: error: {tmp_path / 'none'}: not a prepared "
                          f"dataset") and err.count("\n") == 1, err
    said = []
    check_start(parse_args([*args, "--data", str(random_dataset(tmp_path / "data")), "--backbone", "tiny"]), 1,
                said.append)
    return said


def test_a_learning_rate_above_the_measured_safe_range_warns(tmp_path, capsys):
    from vidmusician.training.recipe import MAX_SAFE_LR as high
    from vidmusician.training.recipe import lr_warning

    assert lr_warning(Recipe(lr=1e-4)) is None and lr_warning(Recipe(lr=high, min_lr=0)) is None
    assert f"lr 0.1 is above {high:g}" in lr_warning(Recipe(lr=0.1))
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"stage": 1, "max_steps": 20, "warmup_steps": 2, "lr": 0.1, "batch_size": 2}')
    assert said_before_training(recipe, tmp_path, capsys) == [lr_warning(Recipe(lr=0.1))]


@pytest.mark.parametrize("rank, dim, ok", [(15, 32, True), (16, 32, False), (64, 32, False), (64, 1024, True)])
def test_a_rhythm_rank_that_is_not_low_rank_is_refused(rank, dim, ok):
    from vidmusician.errors import ConfigError

    if ok:
        AdapterConfig(dim=dim, num_layers=4, rhythm_rank=rank)
    else:
        with pytest.raises(ConfigError, match=f"rhythm_rank {rank} is not low rank for width {dim}"):
            AdapterConfig(dim=dim, num_layers=4, rhythm_rank=rank)
    # A full-width identity linear is always allowed, and is what a narrow backbone gets by default.
    AdapterConfig(dim=dim, num_layers=4, rhythm_rank=None)


def test_a_narrow_backbone_defaults_to_a_full_width_rhythm_linear(tiny):
    assert AdapterConfig.for_backbone(tiny()).rhythm_rank is None
    assert AdapterConfig.for_backbone(tiny(), rhythm_rank=4).rhythm_rank == 4


def test_a_preset_is_only_used_for_a_backbone_of_its_shape(tiny):
    """A miniature export under a real hub name (what the offline tests load) gets no preset."""
    musicgen = tiny()
    musicgen.name = "facebook/musicgen-small"
    config = AdapterConfig.for_backbone(musicgen)
    assert (config.num_layers, config.semantic_layers, config.backbone) == (4, [0, 1, 2, 3], "facebook/musicgen-small")


def test_an_adapter_saved_with_a_rank_now_refused_still_loads(tmp_path):
    """The low-rank rule is for new adapters: one trained before it keeps loading, with a warning."""
    import json

    data = json.loads(AdapterConfig(dim=32, num_layers=4, rhythm_rank=8).to_json())
    data["rhythm_rank"] = 64  # what the old default gave a 32-wide backbone
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="rhythm_rank 64 is not low rank for width 32 .*; kept as saved"):
        assert AdapterConfig.load(tmp_path).rhythm_rank == 64
