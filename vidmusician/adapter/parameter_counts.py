"""Adapter parameter counts from a config's shapes alone: no torch, no model.

``vidmusician info`` and the model card count a preset's parameters in well under
a second with these. Each function counts one module of :mod:`vidmusician.adapter.layers`
or :mod:`vidmusician.adapter.semantic` from the shapes it is built with;
``tests/test_presets.py`` checks every count against the built modules
(:func:`vidmusician.adapter.build.built_parameter_counts`).
"""

from __future__ import annotations

from ..config import AdapterConfig


def linear(inputs: int, outputs: int, bias: bool = True) -> int:
    """``nn.Linear(inputs, outputs, bias)``."""
    return inputs * outputs + (outputs if bias else 0)


def layer_norm(dim: int) -> int:
    """``nn.LayerNorm(dim)``: a weight and a bias."""
    return 2 * dim


def visual_memory(global_dim: int, memory_dim: int, max_tokens: int) -> int:
    """``VisualMemory``: LayerNorm + Linear + learned positions."""
    return layer_norm(global_dim) + linear(global_dim, memory_dim) + max_tokens * memory_dim


def t5_lora(t5: dict, rank: int) -> int:
    """The LoRA of ``T5SemanticEncoder``: A [in, r] and B [r, out] on q, k, v and o of every T5 block."""
    inner = t5["num_heads"] * t5["d_kv"]  # q, k, v: d_model -> inner; o: inner -> d_model
    per_block = 3 * (linear(t5["d_model"], rank, False) + linear(rank, inner, False))
    per_block += linear(inner, rank, False) + linear(rank, t5["d_model"], False)
    return t5["num_layers"] * per_block


def semantic_encoder(config: AdapterConfig) -> int:
    """The module that makes the visual memory: ``VisualMemory`` or ``T5SemanticEncoder``."""
    if config.semantic_encoder == "linear":
        return visual_memory(config.global_dim, config.memory_dim, config.max_global_tokens)
    if config.t5 is None:
        raise ValueError("semantic_encoder 't5-lora' is counted from the T5's shapes (config.t5)")
    width = config.t5["d_model"]
    # The embedding manager E into T5's input space, the LoRA, the projector P out of it.
    return (visual_memory(config.global_dim, width, config.max_global_tokens) + t5_lora(config.t5, config.lora_rank)
            + visual_memory(width, config.memory_dim, config.max_global_tokens))


def semantic_cross_attention(config: AdapterConfig) -> int:
    """``SemanticCrossAttention``: LayerNorm, q, kv (no biases), and the out-projection."""
    return (layer_norm(config.dim) + linear(config.dim, config.attn_dim, False)
            + linear(config.memory_dim, 2 * config.attn_dim, False) + linear(config.attn_dim, config.dim))


def identity_linear(dim: int, rank: int | None) -> int:
    """``IdentityLinear``: a full linear, or down (no bias) and up of the low-rank update."""
    return linear(dim, dim) if rank is None else linear(dim, rank, False) + linear(rank, dim)


def count_adapter_parameters(config: AdapterConfig) -> dict[str, int]:
    """Adapter parameter counts per group for a config, without a backbone: ``{semantic, rhythm, total}``."""
    semantic = semantic_encoder(config) + len(config.semantic_layers) * semantic_cross_attention(config)
    rhythm = 0
    if config.rhythm_layers:  # Zero-Linear O, then one identity-initialized linear per layer
        rhythm = (linear(config.local_dim * len(config.rhythm_lags), config.dim)
                  + len(config.rhythm_layers) * identity_linear(config.dim, config.rhythm_rank))
    return {"semantic": semantic, "rhythm": rhythm, "total": semantic + rhythm}
