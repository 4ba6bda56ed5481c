"""`vidmusician info PRESET_OR_DIR`: an adapter's config and trainable parameter counts."""

from __future__ import annotations

import json
import os
from pathlib import Path

HELP = "show an adapter preset's or folder's config and trainable parameter counts"


def add_arguments(parser):
    from ...sizing import preset_names  # data only: no torch

    parser.add_argument("adapter", metavar="PRESET_OR_DIR",
                        help=f"a preset name ({', '.join(preset_names())}), "
                             "an adapter folder, an adapter_config.json, or a Hugging Face Hub id "
                             "(org/name[@revision]; only its adapter_config.json is fetched)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args) -> int:
    # Nothing here loads torch, open_clip or audiocraft for a preset or a folder: a config and its
    # counts are data and arithmetic (a Hub id needs huggingface_hub).
    from ...adapter.parameter_counts import count_adapter_parameters
    from ...config import describe_memory, describe_rhythm_input
    from . import one_line_warnings

    with one_line_warnings("info"):
        config = _load(args.adapter)
    counts = count_adapter_parameters(config)
    trainable = {"semantic": counts["semantic"], "rhythm": counts["rhythm"], "total": counts["total"]}
    if args.json:
        print(json.dumps({"config": config.to_dict(), "trainable_parameters": trainable}, indent=2, sort_keys=True))
        return 0
    c = config
    print(f"adapter for {c.backbone} (dim {c.dim}, {c.num_layers} layers, {c.frame_rate:g} Hz codec)")
    from ...video.encoder_specs import ACTIVATION_NAMES, natural_activation

    activation = c.encoder_activation or natural_activation(c.encoder)
    print(f"  visual encoder   {c.encoder} ({ACTIVATION_NAMES.get(activation, activation or 'activation unknown')}): "
          f"global {c.global_dim}-d at {c.global_fps:g} fps, "
          f"local {c.local_dim}-d at {c.local_fps:g} fps")
    print(f"  semantic         cross-attention in {len(c.semantic_layers)} layers "
          f"(width {c.attn_dim}, {c.attn_heads} heads, {describe_memory(c)})")
    if c.semantic_encoder == "t5-lora":
        t5 = c.t5 or {}
        print(f"  semantic encoder t5-lora: embedding manager -> the backbone's T5 ({t5.get('num_layers')} blocks, "
              f"{t5.get('d_model')}-d) with LoRA rank {c.lora_rank}, alpha {c.lora_alpha:g} -> projector")
    else:
        print("  semantic encoder linear: LayerNorm + Linear + learned positions")
    rank = "full" if c.rhythm_rank is None else f"rank {c.rhythm_rank}"
    print(f"  rhythm           in-attention in {len(c.rhythm_layers)} layers ({rank}), {describe_rhythm_input(c)}")
    print(f"  stage            {c.stage}")
    print("trainable parameters")
    for group in ("semantic", "rhythm", "total"):
        print(f"  {group:<16} {trainable[group]:>12,}  ({trainable[group] / 1e6:.2f}M)")
    return 0


def _load(name: str):
    """The config of an adapter folder (or either of its files), a Hub id or a preset."""
    from ...config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, adapter_folder
    from ...errors import ConfigError
    from ...sizing import load_preset, preset_names

    if Path(name).exists():
        config = AdapterConfig.load(name)
        folder = adapter_folder(name)
        # A config that a stopped save left beside new weights describes other weights: refused, as loading does.
        if folder.is_dir():
            from ...adapter_files import check_saved_whole, saved_config_digest

            check_saved_whole(folder, saved_config_digest(folder / WEIGHTS_NAME))
        return config
    if name.removeprefix("facebook/") in preset_names():
        return load_preset(name)
    from ...hub import is_hub_id, resolve_adapter  # huggingface_hub: not for a preset

    if is_hub_id(name):
        return AdapterConfig.load(resolve_adapter(name, files=(CONFIG_NAME,)))
    if "/" in name or os.sep in name or name.startswith((".", "~")):
        raise ConfigError(f"{name}: no such adapter folder; give an adapter folder, a Hub id "
                          f"(org/name) or a preset ({', '.join(preset_names())})")
    return load_preset(name)  # names the presets there are
