"""MusicGen's training loss, pure functions of the LM's output: masked cross-entropy per codebook."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def codebook_losses(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor):
    """Cross-entropy summed over the valid positions of each codebook, and their counts ([K], [K]).

    ``logits`` are NaN where ``mask`` is False (audiocraft's marker of invalid
    steps): they are indexed out, never multiplied by zero.
    """
    sums, counts = [], []
    for k in range(codes.shape[1]):
        m = mask[:, k]
        sums.append(F.cross_entropy(logits[:, k][m].float(), codes[:, k][m], reduction="sum"))
        counts.append(m.sum())
    return torch.stack(sums), torch.stack(counts)


def loss_mask(lm, valid: torch.Tensor) -> torch.Tensor:
    """[B, K, T]: the positions the loss counts, each window masked at its own length.

    audiocraft's delay pattern leaves the last ``delay_k`` steps of codebook k
    undefined; in a batch padded to a longer window those steps would be
    predicted from the padding. Masking every window by its own length's pattern
    makes a window's loss the same alone or padded in any batch.
    """
    B, T = valid.shape
    K = lm.num_codebooks
    lengths = valid.sum(dim=1).tolist()
    mask = torch.zeros(B, K, T, dtype=torch.bool, device=valid.device)
    for length in set(lengths):
        if length == 0:
            continue
        pattern = lm.pattern_provider.get_pattern(length)
        codes = torch.zeros(1, K, length, dtype=torch.long)
        steps = pattern.build_pattern_sequence(codes, lm.special_token_id, keep_only_valid_steps=True)[0].shape[-1]
        own = pattern.revert_pattern_logits(torch.zeros(1, 1, K, steps), float("nan"), keep_only_valid_steps=True)[2]
        rows = [i for i, n in enumerate(lengths) if n == length]
        mask[rows, :, :length] = own.to(valid.device)
    return mask


def coarse_codebooks(lm) -> int:
    """How many leading codebooks are coarse: those at delay 0 of the LM's delay pattern.

    Mono MusicGen has one (codebook 0). Stereo MusicGen interleaves its channels' codebooks
    ``[L0, R0, L1, R1, ...]`` at delays ``[0, 0, 1, 1, ...]``: two, each channel's first.
    A pattern without delays (not MusicGen's) counts its first codebook.
    """
    delays = list(getattr(lm.pattern_provider, "delays", None) or [0])
    first = next((k for k, d in enumerate(delays) if d != delays[0]), len(delays))
    assert all(d != delays[0] for d in delays[first:]), f"coarse codebooks are not leading: delays {delays}"
    return first


def plausible_targets(base_logits: torch.Tensor, codes: torch.Tensor, fraction: float,
                      first: int = 1) -> torch.Tensor:
    """[B, K, T]: the targets the frozen base finds plausible, so that the loss may count them.

    Every target of the first ``first`` codebooks (:func:`coarse_codebooks`) counts (the coarse codes carry what
    the video calls for, including what the base alone would not expect there); in the
    finer codebooks a target counts when its probability under the base is at least
    ``fraction`` of the base's most likely token's. A lossy soundtrack (AAC, noise)
    rewrites the fine codebooks into tokens the base, which learned clean music, rules
    out: adapters trained to predict them would learn the codec's noise, and guidance,
    which extrapolates from the base through the adapted model, amplifies it
    (docs/alignment.md). Positions where ``base_logits`` is NaN (outside the delay
    pattern) are False.
    """
    keep = torch.ones(codes.shape, dtype=torch.bool, device=codes.device)
    for k in range(first, codes.shape[1]):
        logp = base_logits[:, k].float().log_softmax(dim=-1)
        # log p(target) - log p(top) = logit(target) - max logit
        gap = logp.gather(-1, codes[:, k, :, None])[..., 0] - logp.amax(dim=-1)
        keep[:, k] = gap >= math.log(fraction)
    return keep
