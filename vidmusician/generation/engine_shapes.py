"""Fixed shapes for a window's memories in the decode engine: texts and visual memories of
other lengths are padded to a few shapes (masked out of the attention), so windows share
a key/value layout, and on CUDA one captured step."""

from __future__ import annotations

import torch.nn.functional as F

__all__ = ["pad_folded", "text_slots"]


def text_slots(tokens: int) -> int:
    """Cross-attention slots for a text of ``tokens`` tokens: a power of two, at least 32
    (texts of 1 to 32 tokens share one shape, and so one captured step)."""
    return max(32, 1 << (tokens - 1).bit_length())


def pad_folded(folded, heads: int, tokens: int):
    """A :class:`~vidmusician.adapter.layers.FoldedMemory` of ``t`` tokens padded to ``tokens``
    (keys no step attends: score ``-inf``, zero values), so every window has one shape."""
    qk_t, vo, bias = folded
    b, d, ht = qk_t.shape
    t = ht // heads
    if t == tokens:
        return folded
    assert t < tokens, (t, tokens)
    pad = tokens - t
    qk = qk_t.transpose(1, 2).reshape(b, heads, t, d)
    qk = F.pad(qk, (0, 0, 0, pad)).reshape(b, heads * tokens, d)
    vo = F.pad(vo.reshape(b, heads, t, d), (0, 0, 0, pad)).reshape(b, heads * tokens, d)
    bias = F.pad(bias.reshape(b, 1, heads, t), (0, pad), value=float("-inf")).reshape(b, 1, heads * tokens)
    return type(folded)(qk.contiguous().transpose(1, 2), vo.contiguous(), bias)
