"""Which decoder a generation runs on: the static-cache engine where it applies, else the reference path.

The engine (:mod:`vidmusician.generation.engine`) computes MusicGen's text models; a
model it cannot compute falls back to ``sample_window`` (audiocraft's streaming
forward) with a one-line warning. Each LM keeps its last engine, so its caches and CUDA
graphs serve every window and every video of that batch shape.
"""

from __future__ import annotations

import warnings
import weakref

from .engine import DecodeEngine, base_layers
from .guidance import GenerationParams, Guidance

__all__ = ["engine_for", "select_engine", "unsupported_reason"]

# Each LM's engine, for one batch shape at a time (the caches of a 30 s window are large);
# it goes with the LM.
_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def unsupported_reason(lm) -> str | None:
    """Why the engine cannot decode ``lm``, in a few words; None when it can.

    The engine computes MusicGen's text models: sinusoidal positions, pre-norm layers,
    audiocraft's own ("custom") attention without rotary embeddings, key repetition,
    limited context or normalized queries, text by cross-attention only.
    """
    transformer = lm.transformer
    if transformer.positional_embedding != "sin":
        return f"positional embedding {transformer.positional_embedding!r}"
    fused = [op for op, names in lm.fuser.fuse2cond.items() if op != "cross" and names]
    if fused:
        return f"conditions fused by {', '.join(fused)} (melody models)"
    if not lm.fuser.fuse2cond.get("cross"):
        return "no condition by cross-attention (no text)"
    for layer in base_layers(lm):
        sa, ca = layer.self_attn, layer.cross_attention
        if not layer.norm_first:
            return "post-norm layers"
        if not sa.custom or (ca is not None and not ca.custom):
            return "torch's nn.MultiheadAttention (custom=False, memory_efficient=False)"
        if sa.rope is not None or sa.qk_layer_norm or sa.kv_repeat != 1 or sa.past_context is not None:
            return "rotary embeddings, normalized queries, repeated keys or a limited context"
        if not sa.causal or (ca is not None and ca.qk_layer_norm):
            return "non-causal self-attention or normalized cross-attention queries"
    return None


def engine_for(lm, batch: int, branches: int, max_len: int) -> "DecodeEngine":
    """The engine of ``lm`` for ``batch`` samples in ``branches`` branches and windows of
    up to ``max_len`` sequence steps (made once, then reused with its caches and graphs)."""
    device = next(lm.parameters()).device
    old = _ENGINES.get(lm)
    if old is None or (old.batch, old.branches, old.device) != (batch, branches, device) or old.max_len < max_len:
        # No reference left to the old engine: its caches go before the new one's are allocated.
        del old
        _ENGINES.pop(lm, None)
        _ENGINES[lm] = DecodeEngine(lm, batch, branches, max_len, device)
    return _ENGINES[lm]


def select_engine(lm, params: GenerationParams, batch: int, guidance: Guidance, window_frames: int,
                  own_hooks: tuple = ()) -> "DecodeEngine | None":
    """The engine a generation runs on, or None for the reference path (``sample_window``).

    ``params.engine`` 'reference' asks for the reference path. 'fast' takes the engine
    where it applies: an LM it cannot compute falls back with a one-line warning, and an
    LM that forward hooks observe (other than the adapters' own, ``own_hooks``) falls back
    silently, so that the hooks see the forwards they were registered for.
    """
    if params.engine == "reference":
        return None
    reason = unsupported_reason(lm)
    if reason is not None:
        warnings.warn(f"the fast decode engine does not support this model ({reason}); "
                      f"using the reference path (engine='reference')", stacklevel=3)
        return None
    if _observed(lm, set(own_hooks)):
        return None
    max_len = len(lm.pattern_provider.get_pattern(window_frames).layout)
    return engine_for(lm, batch, guidance.branches, max_len)


def _observed(lm, own_hooks: set) -> bool:
    """Whether a forward hook on one of the LM's modules waits for forwards the engine does not make."""
    for module in lm.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            if any(key not in own_hooks for key in hooks):
                return True
    return False
