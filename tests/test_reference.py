"""The adapters against hand-written references: textbook attention and the in-attention chain.

The adapters compute their math folded (the cross-attention's norm and projections
folded into per-window matrices and a score bias; the in-attention chain for all
layers at once, ahead of the steps). Here the same weights run through the
formulas of the design, written out from the parameters, on a base model whose
hidden states the test adapts itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import perturb_adapters, random_video_batch, tiny_config
from test_adapters import codes_for, null_text, streamed_logits
from vidmusician import attach_adapters
from vidmusician.adapter.layers import SemanticCrossAttention

# Every comparison here is folded math against the same math written out: rounding only.
# MEASURED (scripts/numerics_spread.py, seeds 0-2, ATen default/avx2/avx512 x 1 and 2
# threads): logits up to 1.7e-6 apart, the layer's gradients 7.6e-6 (a third of the old
# 1e-5 bound), the model's gradients up to 0.47 of the old 1e-5 x max bound. The bounds
# below sit 13x (logits) to 20-30x (gradients) above; a wrong fold is off by the size of
# the term it drops.
pytestmark = pytest.mark.numerics
LOGITS_TOL = 2e-5


def textbook_cross_attention(attn: SemanticCrossAttention, h, memory, key_mask):
    """``Out(MultiHeadAttn(Q(norm(h)), K(M), V(M)))`` with torch's own attention."""
    B, S, _ = h.shape
    T, H = memory.shape[1], attn.heads
    q = attn.q(attn.norm(h)).view(B, S, H, -1).transpose(1, 2)
    k, v = attn.kv(memory).view(B, T, 2, H, -1).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
    return attn.out(out.transpose(1, 2).reshape(B, S, -1))


def randomize_norm(attn: SemanticCrossAttention, g: torch.Generator):
    """A norm weight far from 1 and a bias far from 0: both fold into the prepared inputs."""
    with torch.no_grad():
        attn.norm.weight.copy_(1 + 0.5 * torch.randn(attn.norm.weight.shape, generator=g))
        attn.norm.bias.copy_(0.5 * torch.randn(attn.norm.bias.shape, generator=g))


def test_semantic_cross_attention_matches_textbook_attention():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    attn = SemanticCrossAttention(dim=24, memory_dim=12, attn_dim=16, heads=4)
    randomize_norm(attn, g)
    with torch.no_grad():
        attn.out.weight.normal_(generator=g)
        attn.out.bias.normal_(generator=g)
    B, S, T = 3, 5, 6
    h, memory = torch.randn(B, S, 24, generator=g), torch.randn(B, T, 12, generator=g)
    key_mask = torch.ones(B, T, dtype=torch.bool)
    key_mask[0, 4:] = False  # a video shorter than the window
    key_mask[2, 1:] = False  # row 2: no frame; its first key stays visible, and its delta must be 0
    has_frame = torch.tensor([True, True, False])
    prepared = attn.prepare(memory, key_mask, has_frame)
    got = attn(h, prepared)
    ref = textbook_cross_attention(attn, h, memory, key_mask)
    torch.testing.assert_close(got[:2], h[:2] + ref[:2], atol=LOGITS_TOL, rtol=LOGITS_TOL)
    assert torch.equal(got[2], h[2])  # no frame: exactly no change
    # Training reaches every weight as through the reference (the folding is exact),
    # the norm's weight and bias included.
    w = torch.randn(B, S, 24, generator=g)
    params = [attn.q.weight, attn.kv.weight, attn.out.weight, attn.out.bias, attn.norm.weight, attn.norm.bias]
    grads = torch.autograd.grad((got[:2] * w[:2]).sum(), params)
    ref_grads = torch.autograd.grad((ref[:2] * w[:2]).sum(), params)
    for a, b in zip(grads, ref_grads):
        assert b.abs().max() > 1e-3  # every weight matters here, so a wrong fold shows
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # In place (generation): the same values, written into h itself.
    h_in = h.clone()
    with torch.no_grad():
        out = attn(h_in, prepared, in_place=True)
    assert out.data_ptr() == h_in.data_ptr()
    torch.testing.assert_close(h_in, got, atol=1e-6, rtol=1e-6)
    # Zero-initialized output projection: exactly no change for every row.
    fresh = SemanticCrossAttention(dim=24, memory_dim=12, attn_dim=16, heads=4)
    randomize_norm(fresh, g)
    assert torch.equal(fresh(h, fresh.prepare(memory, key_mask, has_frame)), h)


def in_attention_linear(linear, r):
    """L_j written out from its parameters: ``W r + b`` with ``W`` the full weight, or ``I + up @ down``."""
    if linear.rank is None:
        return r @ linear.linear.weight.T + linear.linear.bias
    return r + (r @ linear.down.weight.T) @ linear.up.weight.T + linear.up.bias


def adapt_by_hand(base_lm, vm, video, frame_offset: int, steps: int):
    """Forward pre-hooks on the base model's layers that add what the design says, for the video rows:
    ``r_0 = O([local(t), local(t - lag_1), ...])`` (the first frame's before the video), ``r_j = L_j(r_{j-1})``,
    ``h += r_j``, then ``h += CrossAttn(norm(h), M)``.

    The adapted model's own adapter modules provide the weights (and receive the gradients).
    """
    config, inputs = vm.config, vm.lm.video_inputs
    rows = video.present.nonzero().flatten()
    lead = max(config.rhythm_lags)
    signal = video.local[rows]
    # Before the video its first frame, after it zeros.
    padded = torch.cat([signal[:, :1].expand(-1, lead, -1), F.pad(signal, (0, 0, 0, steps))], dim=1)
    at = [padded[:, lead + frame_offset - lag:lead + frame_offset - lag + steps] for lag in config.rhythm_lags]
    local = torch.cat(at, dim=-1)
    if config.rhythm_compression is not None:
        local = torch.log(1 + local / config.rhythm_compression)
    r = F.linear(local, inputs.rhythm_in.proj.weight, inputs.rhythm_in.proj.bias)
    residuals = {}
    for i in config.rhythm_layers:
        r = residuals[i] = in_attention_linear(inputs.layers[i].rhythm, r)
    first = round(frame_offset / video.frame_rate * video.global_fps)
    window = slice(first, first + config.max_global_tokens)
    memory = inputs.memory(video.global_feats[rows, window])
    key_mask = video.global_mask[rows, window]

    def adapt(i):
        def hook(module, args):
            h = args[0][rows]
            if i in residuals:
                h = h + residuals[i]
            if i in config.semantic_layers:
                h = h + textbook_cross_attention(inputs.layers[i].semantic, h, memory, key_mask)
            return (args[0].index_copy(0, rows, h), *args[1:])
        return hook

    return [base_lm.transformer.layers[i].register_forward_pre_hook(adapt(i))
            for i in sorted(set(config.semantic_layers) | set(config.rhythm_layers))]


# Full-width in-attention, and a rank below the model width (32); windows that start at
# frame 0 and one second in (frame 50 at the tiny codec's 50 Hz) (another stretch of local frames and global tokens); video
# rows in one span and scattered (the wrappers' two ways of picking rows); a rhythm input
# of the raw current frame only (the paper's, and adapters saved before the context), of
# the default context and compression, and of a longer context.
@pytest.mark.parametrize("rank, frame_offset, present, context, compression", [
    (None, 0, [True, True, False], 0, None), (8, 50, [True, False, True], 2, 0.01),
    (None, 0, [True, True, False], 3, 0.5)])
def test_adapted_model_matches_the_design_written_out(tiny, rank, frame_offset, present, context, compression):
    base, musicgen = tiny(), tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen, rhythm_rank=rank, rhythm_context=context,
                                               rhythm_compression=compression))
    perturb_adapters(vm, scale=0.2)  # the norms' weights and biases too
    vm.set_trainable(["semantic", "rhythm"])
    video = random_video_batch(3, present)
    video.global_mask[1 if present[1] else 2, 5:] = False  # a video that ends inside the window
    codes = codes_for(musicgen, batch=3, steps=24)
    cond = base.lm.condition_provider(base.lm.condition_provider.tokenize(null_text(3)))
    hooks = adapt_by_hand(base.lm, vm, video, frame_offset, codes.shape[-1])
    ref = base.lm(codes, [], condition_tensors=cond)
    for hook in hooks:
        hook.remove()
    untouched = base.lm(codes, [], condition_tensors=cond)
    assert not torch.allclose(ref[0], untouched[0], atol=1e-2)  # the adapters matter here
    with vm.video(video, frame_offset=frame_offset):
        got = vm.lm(codes, [], condition_tensors=cond)  # training: autograd on, rows copied
        streamed = streamed_logits(vm.lm, codes, cond)  # generation: one step at a time, in place
    torch.testing.assert_close(got, ref, atol=LOGITS_TOL, rtol=LOGITS_TOL)
    torch.testing.assert_close(streamed, ref, atol=LOGITS_TOL, rtol=LOGITS_TOL)
    # Training moves every adapter weight as through the written-out model.
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    params = vm.trainable_parameters()
    grads = torch.autograd.grad((got * w).sum(), params)
    ref_grads = torch.autograd.grad((ref * w).sum(), params)
    for a, b in zip(grads, ref_grads):  # gradients of a sum over 115,200 logits: up to ~1e2
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4)
