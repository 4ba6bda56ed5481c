"""Sizing adapter configs: the shipped presets, and a config fitted to a loaded MusicGen.

Above :mod:`vidmusician.config` (which knows no model) and
:mod:`vidmusician.backbone_spec` (a backbone's shape): this is where a config meets a
backbone. Every function returns a new config; none changes the one it is given.
"""

from __future__ import annotations

from pathlib import Path

from .backbone_spec import backbone_spec
from .config import AdapterConfig, low_rank_is_smaller
from .errors import ConfigError, differing_fields

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    """The shipped presets' names ('musicgen-small', 'musicgen-stereo-medium', ...)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> AdapterConfig:
    """Loads a shipped preset by name ('musicgen-small', 'musicgen-stereo-medium', ...)."""
    path = PRESET_DIR / f"{name.removeprefix('facebook/')}.json"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return AdapterConfig.load(path)


def preset_for(backbone: str, dim: int, num_layers: int) -> AdapterConfig | None:
    """The preset of a backbone: the one named after it, else the mono preset of the
    same LM architecture (a fine-tuned export keeps its base model's shape), else None.
    A preset is only ever returned for a backbone of its width and depth."""
    named = PRESET_DIR / f"{backbone.removeprefix('facebook/')}.json"
    if backbone.startswith("facebook/") and named.is_file():
        preset = AdapterConfig.load(named)
        if (preset.dim, preset.num_layers) == (dim, num_layers):
            return preset
    for name in preset_names():
        preset = load_preset(name)
        if "stereo" not in name and (preset.dim, preset.num_layers) == (dim, num_layers):
            return preset
    return None


def config_for_backbone(musicgen, **overrides) -> AdapterConfig:
    """A config sized to a loaded MusicGen, starting from its shipped preset.

    The preset is found by the backbone's name, else by its LM architecture
    (width and depth), so a fine-tuned export gets its base model's adapter
    sizes; without one the class defaults apply. Width, depth and frame rate
    always come from the backbone; ``overrides`` go on top of everything.
    (Also :meth:`AdapterConfig.for_backbone`.)
    """
    spec = backbone_spec(musicgen)
    preset = preset_for(spec.name, spec.dim, spec.num_layers)
    base = preset.to_dict() if preset is not None else {}
    base.pop("version", None)  # the writer's version, not the preset's
    base.update(backbone=spec.name, dim=spec.dim, num_layers=spec.num_layers, frame_rate=spec.frame_rate)
    if preset is None and not low_rank_is_smaller(AdapterConfig.rhythm_rank, spec.dim):
        # A narrow backbone (the tiny test model): the default rank would not be low
        # rank there, and a full-width linear is the smaller choice.
        base["rhythm_rank"] = None
    base.update(overrides)
    if base.get("semantic_encoder", AdapterConfig.semantic_encoder) == "t5-lora":
        base["t5"] = backbone_t5(musicgen)  # the T5 the adapter will run through
    elif "t5" not in overrides:
        base["t5"] = None  # a 'linear' adapter depends on no T5
    return AdapterConfig(**base)


def backbone_t5(musicgen) -> dict:
    """The architecture of the backbone's T5 text encoder; ConfigError when it has none."""
    own = _t5_architecture(musicgen)
    if own is None:
        raise ConfigError(f"backbone {musicgen.name!r} has no T5 text encoder, which semantic_encoder 't5-lora' "
                          f"runs the video through; use semantic_encoder 'linear'")
    return own


def _t5_architecture(musicgen) -> dict | None:
    from .adapter.t5 import architecture, text_conditioner  # torch and audiocraft: only with a model

    conditioner = text_conditioner(musicgen)
    return architecture(conditioner.t5) if conditioner is not None else None


def sized_to_t5(config: AdapterConfig, musicgen) -> AdapterConfig:
    """``config`` with ``t5`` set to the backbone's T5 ('t5-lora'; a copy when it was unset).

    Raises:
        ConfigError: the config was made for another T5 than the backbone's, or for a T5
            where the backbone has none.
    """
    if config.semantic_encoder != "t5-lora":
        return config
    if config.t5 is None:
        return config.replace(t5=backbone_t5(musicgen))  # a config made by hand: sized to this backbone's T5
    own = _t5_architecture(musicgen)
    if own is None:
        # A config made for a backbone's T5 (a saved adapter's): its LoRA weights are that T5's,
        # so 'linear' would not load them; the backbone it was made for would.
        fix = (f"use backbone {config.backbone!r}, the one it was made for" if config.backbone != musicgen.name
               else f"load the {config.backbone!r} with the T5 it was made for")
        raise ConfigError(f"adapter config for {config.backbone!r} runs the video through that backbone's T5 text "
                          f"encoder (semantic_encoder 't5-lora'), and backbone {musicgen.name!r} has none; {fix}")
    if config.t5 != own:
        diffs = differing_fields(config.t5, own, list(own), ("adapter", "backbone"))
        raise ConfigError(f"adapter config for {config.backbone!r} was made for another T5 text encoder than "
                          f"backbone {musicgen.name!r} has ({diffs}); use the backbone it was trained on")
    return config
