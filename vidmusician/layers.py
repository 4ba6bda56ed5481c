"""The adapter math: semantic cross-attention and rhythmic in-attention.

Both adapters are built so that the adapted model equals the base model
exactly at initialization: the cross-attention's output projection starts at
zero, and the in-attention chain starts from a zero projection of the local
features. Training moves them away from zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class VisualMemory(nn.Module):
    """Projects global visual tokens to the memory every cross-attention reads.

    Args:
        global_dim: width of the global visual embeddings (CLIP image embeddings).
        memory_dim: width of the memory.
        max_tokens: longest run of global tokens attended at once; the length of
            the learned temporal position embedding.
    """

    def __init__(self, global_dim: int, memory_dim: int, max_tokens: int):
        super().__init__()
        self.norm = nn.LayerNorm(global_dim)
        self.proj = nn.Linear(global_dim, memory_dim)
        # Small random positions (as in ViT) so attention can tell seconds apart
        # from step 0; harmless at init because the cross-attention outputs zero.
        self.pos = nn.Parameter(torch.randn(max_tokens, memory_dim) * 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T, global_dim] -> memory [B, T, memory_dim] (T <= max_tokens)."""
        T = tokens.shape[1]
        if T > self.pos.shape[0]:
            raise ValueError(f"{T} global tokens exceed the position table ({self.pos.shape[0]})")
        return self.proj(self.norm(tokens)) + self.pos[:T]


class SemanticCrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention from hidden states to the visual memory.

    ``delta = Out(Attn(Q(norm(h)), K(M), V(M)))`` with ``Out`` zero-initialized.
    Everything that depends only on the memory (scaled keys, values, the key
    mask as an additive bias, the output bias) is made once per window by
    :meth:`prepare` and reused at every generation step, so a step costs a
    norm, the query projection, two small batched matmuls, a softmax and the
    output projection.
    """

    def __init__(self, dim: int, memory_dim: int, attn_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, attn_dim, bias=False)
        self.kv = nn.Linear(memory_dim, 2 * attn_dim, bias=False)
        self.out = nn.Linear(attn_dim, dim)
        # Zero output projection (ControlNet's zero_module): the delta is exactly 0
        # at step 0, so the adapted model starts as the base model; gradients still
        # reach `out` because its input is non-zero.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def prepare(self, memory: torch.Tensor, key_mask: torch.Tensor, has_frame: torch.Tensor) -> tuple:
        """Per-window attention inputs.

        Args:
            memory: [B, T, memory_dim].
            key_mask: [B, T], True where a global frame exists (at least one per row).
            has_frame: [B]; rows without any frame get a zero delta.
        """
        B, T, _ = memory.shape
        H = self.heads
        k, v = self.kv(memory).view(B, T, 2, H, -1).permute(2, 0, 3, 1, 4)  # [B, H, T, hd] each
        keys = (k * k.shape[-1] ** -0.5).transpose(-1, -2).reshape(B * H, -1, T)
        # Zero values and bias for frameless rows: their delta is exactly 0.
        keep = has_frame.to(v.dtype)
        values = (v * keep[:, None, None, None]).reshape(B * H, T, -1)
        mask_bias = torch.zeros(B, T, dtype=k.dtype, device=k.device).masked_fill(~key_mask, float("-inf"))
        mask_bias = mask_bias[:, None, None, :].expand(B, H, 1, T).reshape(B * H, 1, T)
        out_bias = (self.out.bias * keep[:, None])[:, None, :]
        return keys, values, mask_bias, out_bias

    def forward(self, h: torch.Tensor, prepared: tuple) -> torch.Tensor:
        """h [B, S, dim], ``prepared`` from :meth:`prepare` -> delta [B, S, dim]."""
        keys, values, mask_bias, out_bias = prepared
        B, S, _ = h.shape
        H = self.heads
        q = self.q(self.norm(h)).view(B, S, H, -1).transpose(1, 2).reshape(B * H, S, -1)
        attn = torch.bmm(torch.baddbmm(mask_bias, q, keys).softmax(dim=-1), values)
        attn = attn.view(B, H, S, -1).transpose(1, 2).reshape(B, S, -1)
        return torch.baddbmm(out_bias, attn, self.out.weight.t().expand(B, -1, -1))


class IdentityLinear(nn.Module):
    """A linear map initialized to the identity: ``W = I (+ U V)``.

    With ``rank=None`` the full weight is trainable (initialized to I). With a
    rank, the map is ``x + up(down(x))`` with ``up`` zero-initialized: still the
    identity at init, with ``2 * rank * dim`` trainable parameters instead of
    ``dim**2`` (what keeps the medium preset within the paper's budget).
    """

    def __init__(self, dim: int, rank: int | None = None):
        super().__init__()
        self.rank = rank
        if rank is None:
            self.linear = nn.Linear(dim, dim)
            # Identity at init: the chain passes O's output through unchanged.
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(dim))
                self.linear.bias.zero_()
        else:
            self.down = nn.Linear(dim, rank, bias=False)
            self.up = nn.Linear(rank, dim)
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            # Zero update (LoRA's B = 0): the map starts as exactly the identity.
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank is None:
            return self.linear(x)
        return x + self.up(self.down(x))


class RhythmInput(nn.Module):
    """The Zero-Linear O: local change features -> model width.

    Zero-initialized so the in-attention chain carries exactly zero at step 0.
    """

    def __init__(self, local_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(local_dim, dim)
        # Zero-Linear: r_0 = 0 at init, so every r_j = L_j(r_{j-1}) is 0 too.
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, local: torch.Tensor) -> torch.Tensor:
        return self.proj(local)
