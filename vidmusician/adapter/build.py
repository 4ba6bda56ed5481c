"""Building a config's adapter modules, apart from any backbone.

:mod:`vidmusician.adapter.wiring` builds the modules here and puts them into a
MusicGen's LM; :func:`built_parameter_counts` builds the same modules on the meta
device and counts them (what :mod:`vidmusician.adapter.parameter_counts` computes
from the shapes alone). Neither audiocraft nor a backbone is imported.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig
from ..errors import ConfigError
from .layers import IdentityLinear, RhythmInput, SemanticCrossAttention, VisualMemory
from .semantic import T5SemanticEncoder
from .t5 import encoder_from_architecture


def semantic_encoder(config: AdapterConfig, text_conditioner=None) -> nn.Module:
    """The module that turns a window's global tokens into the visual memory (``config.semantic_encoder``).

    Args:
        config: the adapter config.
        text_conditioner: the backbone's audiocraft T5Conditioner ('t5-lora'); None
            builds a T5 of ``config.t5``'s shapes on the current device (for counting
            parameters on the meta device).
    """
    if config.semantic_encoder == "linear":
        return VisualMemory(config.global_dim, config.memory_dim, config.max_global_tokens)
    if text_conditioner is not None:
        t5, autocast = text_conditioner.t5, text_conditioner.autocast
    elif config.t5 is not None:
        t5, autocast = encoder_from_architecture(config.t5), None
    else:
        raise ConfigError("semantic_encoder 't5-lora' needs the T5's shapes (config.t5) or a backbone's T5")
    return T5SemanticEncoder(config.global_dim, config.memory_dim, config.max_global_tokens, t5,
                             config.lora_rank, config.lora_alpha, autocast)


def rhythm_input(config: AdapterConfig) -> RhythmInput | None:
    """Zero-Linear O of the in-attention chain (None when no layer gets in-attention)."""
    if not config.rhythm_layers:
        return None
    return RhythmInput(config.local_dim, config.dim, config.rhythm_lags, config.rhythm_compression)


def layer_adapters(config: AdapterConfig, i: int) -> tuple[SemanticCrossAttention | None, IdentityLinear | None]:
    """Layer ``i``'s adapters: ``(semantic cross-attention, in-attention linear)``, None where it has none."""
    semantic = (SemanticCrossAttention(config.dim, config.memory_dim, config.attn_dim, config.attn_heads)
                if i in config.semantic_layers else None)
    rhythm = IdentityLinear(config.dim, config.rhythm_rank) if i in config.rhythm_layers else None
    return semantic, rhythm


def built_parameter_counts(config: AdapterConfig) -> dict[str, int]:
    """Adapter parameter counts per group, of the modules built for a config: ``{semantic, rhythm, total}``.

    The modules are built on the meta device (no memory, no weights), by the same
    code that :func:`vidmusician.adapter.wiring.wire_adapters` uses; seconds, where
    :func:`vidmusician.adapter.parameter_counts.count_adapter_parameters` takes microseconds.
    """

    def size(module):
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    with torch.device("meta"):
        counts = {"semantic": size(semantic_encoder(config)), "rhythm": size(rhythm_input(config))}
        for i in range(config.num_layers):
            semantic, rhythm = layer_adapters(config, i)
            counts["semantic"] += size(semantic)
            counts["rhythm"] += size(rhythm)
    counts["total"] = counts["semantic"] + counts["rhythm"]
    return counts
