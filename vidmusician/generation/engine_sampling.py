"""The decode engine's sampler: audiocraft's sampling (temperature, top-k, top-p, greedy)
written so that it runs on the device without a host check, and so inside a CUDA graph."""

from __future__ import annotations

import torch

from .guidance import GenerationParams

__all__ = ["sample_token"]


def sample_token(logits: torch.Tensor, params: GenerationParams, row_seeds=None) -> torch.Tensor:
    """``[B, K, 1]`` tokens from ``[B, K, card]`` logits, on the device, as audiocraft samples them.

    ``torch.multinomial`` of one sample is the argmax of ``probs / q`` with ``q`` drawn
    from an exponential distribution; written out, with the same random draws, it needs
    no check on the host (which ``torch.multinomial`` makes, and a CUDA graph cannot).
    ``row_seeds``: as in :func:`vidmusician.generation.guidance.sample_token` (eager only).
    """
    if not params.samples:
        return torch.argmax(logits, dim=-1, keepdim=True)
    if row_seeds is not None:
        return row_seeds.sample(lambda row: sample_token(row, params), logits)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p > 0.0:  # audiocraft.utils.utils.sample_top_p
        probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
        probs_sum = torch.cumsum(probs_sort, dim=-1)
        probs_sort = probs_sort * (~(probs_sum - probs_sort > params.top_p)).float()
        probs_sort = probs_sort / probs_sort.sum(dim=-1, keepdim=True)
        return torch.gather(probs_idx, -1, _multinomial(probs_sort))
    if params.top_k > 0:  # audiocraft.utils.utils.sample_top_k
        top_k_value, _ = torch.topk(probs, params.top_k, dim=-1)
        probs = probs * (probs >= top_k_value[..., [-1]]).float()
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return _multinomial(probs)


def _multinomial(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row of ``probs`` [..., card]: ``torch.multinomial``'s own one-sample path."""
    flat = probs.reshape(-1, probs.shape[-1])
    q = torch.empty_like(flat).exponential_(1)
    return torch.argmax(flat / q, dim=-1, keepdim=True).reshape(*probs.shape[:-1], 1)
