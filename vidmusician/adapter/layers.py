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
    """Projects global visual tokens to the memory every cross-attention reads ('linear').

    Also the embedding manager and the projector of the 't5-lora' path (LayerNorm +
    Linear + learned positions either side of T5; see :mod:`vidmusician.adapter.semantic`).

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

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T, global_dim] -> memory [B, T, memory_dim] (T <= max_tokens).

        ``mask`` ([B, T], True where a frame exists) is accepted for the semantic
        encoders' common signature; tokens are mapped one by one, so it changes nothing.
        """
        T = tokens.shape[1]
        if T > self.pos.shape[0]:
            raise ValueError(f"{T} global tokens exceed the position table ({self.pos.shape[0]})")
        return self.proj(self.norm(tokens)) + self.pos[:T]


class SemanticCrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention from hidden states to the visual memory.

    ``h + Out(Attn(Q(norm(h)), K(M), V(M)))`` with ``Out`` zero-initialized.
    The memory is constant over a window, so :meth:`prepare` folds the query
    projection into the keys and the output projection into the values once
    per window::

        scores_h = norm(h) Wq_h^T K_h^T / sqrt(d)  =  norm(h) @ QK_h^T   QK_h = K_h Wq_h / sqrt(d): [T, dim]
        Out(...)  = sum_h softmax(scores_h) V_h Wo_h^T + b  =  p @ VO      VO_h = V_h Wo_h^T + b / heads: [T, dim]

    (``b`` is spread over the heads' values as ``b / heads``: each head's
    weights sum to 1.) The norm's weight ``w`` and bias ``beta`` fold in too: with
    ``n`` the standardized ``h``, ``norm(h) @ QK^T = n @ (QK diag(w))^T + QK beta``,
    the second term a per-window score bias. A step then costs a standardization,
    two small batched matmuls and a softmax; in generation the second matmul
    adds the result into ``h`` in place.
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

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def prepare(self, memory: torch.Tensor, key_mask: torch.Tensor, has_frame: torch.Tensor) -> tuple:
        """Per-window attention inputs ``(QK^T [B, dim, H*T], VO [B, H*T, dim], score bias [B, 1, H*T])``.

        ``QK^T`` (norm weight folded in) is a transposed view of a row-major
        ``[B, H*T, dim]`` tensor: a step reads both matrices as contiguous rows. The
        score bias holds the norm bias's scores and ``-inf`` at missing frames.

        Args:
            memory: [B, T, memory_dim].
            key_mask: [B, T], True where a global frame exists (at least one per row).
            has_frame: [B]; rows without any frame get a zero delta.
        """
        B, T, _ = memory.shape
        H = self.heads
        dim, attn_dim = self.q.in_features, self.q.out_features
        k, v = self.kv(memory).view(B, T, 2, H, attn_dim // H).unbind(2)  # [B, T, H, hd] each
        wq = self.q.weight.view(H, -1, dim)  # [H, hd, dim]
        wo = self.out.weight.view(dim, H, -1)  # [dim, H, hd]
        qk = torch.einsum("hed,bthe->bhtd", wq, k * k.shape[-1] ** -0.5).reshape(B, H * T, dim)
        vo = torch.einsum("bthe,dhe->bhtd", v, wo) + self.out.bias / H
        # Zero values (bias included) for frameless rows: their delta is exactly 0.
        vo = (vo * has_frame.to(vo.dtype)[:, None, None, None]).reshape(B, H * T, dim).contiguous()
        mask_bias = torch.zeros(B, T, dtype=qk.dtype, device=qk.device).masked_fill(~key_mask, float("-inf"))
        mask_bias = mask_bias[:, None, None, :].expand(B, 1, H, T).reshape(B, 1, H * T)
        score_bias = mask_bias + (qk @ self.norm.bias)[:, None, :]
        return (qk * self.norm.weight).contiguous().transpose(1, 2), vo, score_bias

    def forward(self, h: torch.Tensor, prepared: tuple, in_place: bool = False) -> torch.Tensor:
        """h [B, S, dim], ``prepared`` from :meth:`prepare` -> h + delta.

        With ``in_place`` the delta is added into ``h`` itself (only where no
        autograd graph holds ``h``).
        """
        qk_t, vo, score_bias = prepared
        B, S, dim = h.shape
        # The standardization alone: the norm's affine part is folded into the prepared inputs.
        scores = torch.baddbmm(score_bias, torch.layer_norm(h, (dim,), None, None, self.norm.eps), qk_t)
        p = scores.view(B, S, self.heads, -1).softmax(dim=-1).view(B, S, -1)  # [B, S, H*T]
        if in_place:
            # Under autocast p may come out in another dtype than h; baddbmm_ needs one.
            return h.baddbmm_(p if p.dtype == h.dtype else p.to(h.dtype), vo)
        # Added outside the matmul: under autocast the matmul runs in half precision,
        # and the hidden states themselves must not be rounded with it.
        return h + torch.bmm(p, vo)


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

    @property
    def dtype(self) -> torch.dtype:
        return (self.linear if self.rank is None else self.up).weight.dtype

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
