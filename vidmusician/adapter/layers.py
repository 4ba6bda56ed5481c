"""The adapter math: semantic cross-attention and rhythmic in-attention.

Both adapters are built so that the adapted model equals the base model
exactly at initialization: the cross-attention's output projection starts at
zero, and the in-attention chain starts from a zero projection of the local
features. Training moves them away from zero.

Shapes and einsum subscripts in the adapter code (this module,
:mod:`~vidmusician.adapter.context`, :mod:`~vidmusician.adapter.wiring`,
:mod:`~vidmusician.adapter.semantic`) use one set of letters; an upper-case letter in the
code is the size of that axis (``H`` heads, ``C`` head width, ...)::

    b  rows of a batch            n  the rows of the model batch that carry video
    s  sequence steps (queries)   t  tokens of a window's visual memory (one per second)
    h  attention heads            c  width of one head (attn_dim = h * c)
    d  model width                m  memory width
    g  global embedding width     p  local feature width (one per patch)

The hidden states are ``x`` (``[b, s, d]``), the visual memory ``M`` (``[b, t, m]``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError


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
        """tokens [b, t, g] -> memory [b, t, m] (t <= max_tokens).

        ``mask`` ([b, t], True where a frame exists) is accepted for the semantic
        encoders' common signature; tokens are mapped one by one, so it changes nothing.
        """
        T = tokens.shape[1]
        if T > self.pos.shape[0]:
            raise ValueError(f"{T} global tokens exceed the position table ({self.pos.shape[0]})")
        # The video enters here: features come in float32, the module may have been cast
        # with the LM (bf16, fp16); LayerNorm on the CPU takes one dtype only.
        tokens = tokens.to(self.proj.weight.dtype)
        return self.proj(self.norm(tokens)) + self.pos[:T]


class FoldedMemory(NamedTuple):
    """A window's visual memory with the cross-attention's projections folded in.

    Made once per window by :meth:`SemanticCrossAttention.prepare`; a step reads it.
    The ``h * t`` axis runs over heads, then tokens: head ``h``'s keys are its ``t``
    consecutive entries.

    Attributes:
        qk_t: [b, d, h*t] ``(K_h Wq_h diag(w) / sqrt(c))^T`` for every head: the scores'
            matrix, norm weight folded in; a transposed view of a contiguous ``[b, h*t, d]``.
        vo: [b, h*t, d] ``V_h Wo_h^T + bo / H``: the values already through the output
            projection (zero for rows without any frame).
        score_bias: [b, 1, h*t] added to every step's scores: the norm bias's share of
            the scores, and ``-inf`` at tokens without a frame.
    """

    qk_t: torch.Tensor
    vo: torch.Tensor
    score_bias: torch.Tensor


class SemanticCrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention from hidden states to the visual memory.

    ``x + Out(Attn(Q(norm(x)), K(M), V(M)))`` with ``Out`` zero-initialized.
    The memory is constant over a window, so :meth:`prepare` folds the query
    projection into the keys and the output projection into the values once
    per window. For head ``h``, with ``Wq_h`` [c, d], ``K_h``, ``V_h`` [t, c],
    ``Wo_h`` [d, c] its slices and ``bo`` the output bias::

        scores_h = norm(x) Wq_h^T K_h^T / sqrt(c)  =  norm(x) QK_h^T        QK_h = K_h Wq_h / sqrt(c): [t, d]
        Out(...) = sum_h softmax(scores_h) V_h Wo_h^T + bo  =  A @ VO       VO_h = V_h Wo_h^T + bo / H: [t, d]

    with ``A`` [s, h*t] the heads' attention weights side by side. (``bo`` is spread
    over the heads' values as ``bo / H``: each head's weights sum to 1.) The norm's
    weight ``w`` and bias ``beta`` fold in too: with ``z`` the standardized ``x``,
    ``norm(x) QK^T = z (QK diag(w))^T + QK beta``, the second term a per-window score
    bias. A step then costs a standardization, two small batched matmuls and a
    softmax; in generation the second matmul adds the result into ``x`` in place.
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

    def prepare(self, memory: torch.Tensor, key_mask: torch.Tensor, has_frame: torch.Tensor) -> FoldedMemory:
        """The window's :class:`FoldedMemory`, which every step of the window reads.

        Args:
            memory: [b, t, m].
            key_mask: [b, t], True where a global frame exists (at least one per row).
            has_frame: [b]; rows without any frame get a zero delta.
        """
        B, T, _ = memory.shape
        H, D = self.heads, self.q.in_features
        C = self.q.out_features // H
        k, v = self.kv(memory).view(B, T, 2, H, C).unbind(2)  # [b, t, h, c] each
        wq = self.q.weight.view(H, C, D)  # [h, c, d]
        wo = self.out.weight.view(D, H, C)  # [d, h, c]
        qk = torch.einsum("hcd,bthc->bhtd", wq, k * C ** -0.5).reshape(B, H * T, D)
        vo = torch.einsum("bthc,dhc->bhtd", v, wo) + self.out.bias / H
        # Zero values (bias included) for frameless rows: their delta is exactly 0.
        vo = (vo * has_frame.to(vo.dtype)[:, None, None, None]).reshape(B, H * T, D).contiguous()
        mask_bias = torch.zeros(B, T, dtype=qk.dtype, device=qk.device).masked_fill(~key_mask, float("-inf"))
        mask_bias = mask_bias[:, None, None, :].expand(B, 1, H, T).reshape(B, 1, H * T)
        score_bias = mask_bias + (qk @ self.norm.bias)[:, None, :]
        # Stored row-major [b, h*t, d] and read transposed: a step reads both matrices as contiguous rows.
        return FoldedMemory((qk * self.norm.weight).contiguous().transpose(1, 2), vo, score_bias)

    def forward(self, x: torch.Tensor, folded: FoldedMemory, in_place: bool = False) -> torch.Tensor:
        """x [b, s, d], ``folded`` from :meth:`prepare` -> x + delta.

        With ``in_place`` the delta is added into ``x`` itself (only where no
        autograd graph holds ``x``).
        """
        B, S, D = x.shape
        # The standardization alone: the norm's affine part is folded into the prepared inputs.
        z = torch.layer_norm(x, (D,), None, None, self.norm.eps)
        scores = torch.baddbmm(folded.score_bias, z, folded.qk_t)  # [b, s, h*t]
        attn = scores.view(B, S, self.heads, -1).softmax(dim=-1).view(B, S, -1)  # A: softmax per head
        if in_place:
            # Under autocast A may come out in another dtype than x; baddbmm_ needs one.
            return x.baddbmm_(attn if attn.dtype == x.dtype else attn.to(x.dtype), folded.vo)
        # Added outside the matmul: under autocast the matmul runs in half precision,
        # and the hidden states themselves must not be rounded with it.
        return x + torch.bmm(attn, folded.vo)


class IdentityLinear(nn.Module):
    """A linear map initialized to the identity: ``W = I (+ U V)``.

    With ``rank=None`` the full weight is trainable (initialized to I). With a
    rank, the map is ``x + up(down(x))`` with ``up`` zero-initialized: still the
    identity at init, with ``2 * rank * d`` trainable parameters instead of
    ``d**2`` (what keeps the medium preset within the paper's budget).
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
        """[..., d] -> [..., d]."""
        if self.rank is None:
            return self.linear(x)
        return x + self.up(self.down(x))


class RhythmInput(nn.Module):
    """The Zero-Linear O: local change features -> model width.

    It reads the change signal at ``lags`` codec frames back from each step (0 first,
    the paper's per-frame input), side by side: ``[p * len(lags)]`` features a step,
    each ``log(1 + change / compression)`` (the raw change with ``compression`` None).
    Zero-initialized so the in-attention chain carries exactly zero at step 0.
    """

    def __init__(self, local_dim: int, dim: int, lags: tuple[int, ...] = (0,), compression: float | None = None):
        super().__init__()
        if not lags or lags[0] != 0 or any(b <= a for a, b in zip(lags, lags[1:])):
            raise ConfigError(f"rhythm input lags must start at 0 and increase, got {lags}")
        self.lags = tuple(int(lag) for lag in lags)
        self.compression = compression
        self.proj = nn.Linear(local_dim * len(self.lags), dim)
        # Zero-Linear: r_0 = 0 at init, so every r_j = L_j(r_{j-1}) is 0 too.
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, local: torch.Tensor) -> torch.Tensor:
        """local [n, s, p * len(lags)] (:meth:`VideoContext.local` with these lags) -> r_0 [n, s, d]."""
        if self.compression is not None:
            # No change (and no video: zeros) stays 0; a change is never negative.
            local = torch.log1p(local.clamp(min=0) / self.compression)
        return self.proj(local)
