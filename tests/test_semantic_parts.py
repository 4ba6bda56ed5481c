"""The semantic path's parts, each checked directly: what a real batch relies on.

The goldens of test_t5_lora see these parts only through one set of logits, with
every mask all ones; here each part is checked on its own terms: padding is
invisible to the visual pseudo-tokens, positions are added where the design puts
them (table row ``i`` to memory token ``i``, after T5 as well as before), and the
LoRA update is scaled by ``alpha / rank``.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_GLOBAL_DIM
from test_adapters import codes_for, logits
from test_t5_lora import adapted, base_t5  # noqa: F401  (a pytest fixture)
from vidmusician.adapter.context import VideoBatch
from vidmusician.adapter.layers import VisualMemory


def padded_batch(musicgen, lengths: list[int], width: int, junk_seed: int) -> VideoBatch:
    """Videos of ``lengths`` seconds (same content whatever the padding), padded to ``width``
    global tokens with random junk (masked out, as real padding is)."""
    g, junk = torch.Generator().manual_seed(0), torch.Generator().manual_seed(junk_seed)
    feats = torch.randn(len(lengths), width, TINY_GLOBAL_DIM, generator=junk) * 3
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    frame_rate = musicgen.compression_model.frame_rate
    local = torch.rand(len(lengths), int(max(lengths) * frame_rate), 16, generator=g)
    for i, n in enumerate(lengths):
        feats[i, :n] = torch.randn(n, TINY_GLOBAL_DIM, generator=g)
        mask[i, :n] = True
    return VideoBatch(feats, mask, local, torch.ones(len(lengths), dtype=torch.bool), 1.0, frame_rate)


@pytest.mark.numerics
def test_t5_pseudo_tokens_do_not_see_the_padding(base_t5):
    """A video shorter than the window (3 s of a 30-token window, beside a 6 s one): the
    T5's attention mask keeps its padded positions out of the real tokens' memory, so
    neither what the padding holds nor how much of it there is changes the logits."""
    vm = adapted(base_t5, perturbed=True)
    codes = codes_for(vm.musicgen, steps=16)
    outs = []
    for width, junk_seed in [(8, 1), (8, 2), (12, 3)]:
        with vm.video(padded_batch(vm.musicgen, [3, 6], width, junk_seed)):
            got, mask = logits(vm.lm, codes)
        outs.append(got[mask])
    # Same process: the padding's share is exactly zero, and a longer padding could only
    # reorder sums. MEASURED (scripts/numerics_spread.py, seeds 0-2, ATen default/avx2/
    # avx512 x 1 and 2 threads): 0 in every setting; dropping the mask fails it.
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-5, rtol=0)


def test_the_projector_adds_table_row_i_to_memory_token_i_after_t5(base_t5):
    """The positions after T5 (the projector's) reach the memory unchanged: moving table
    row ``i`` moves memory token ``i`` by just that, and no other token."""
    vm = adapted(base_t5, perturbed=True)
    memory = vm.lm.video_inputs.memory
    T = 5  # fewer tokens than the table holds (30): row i must be read as row i, not from the end
    tokens = torch.randn(2, T, TINY_GLOBAL_DIM, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, T, dtype=torch.bool)
    with torch.no_grad():
        before = memory(tokens, mask)
        step = torch.randn(memory.projector.pos.shape[1])
        memory.projector.pos[2] += step
        after = memory(tokens, mask)
    others = [i for i in range(T) if i != 2]
    torch.testing.assert_close(after[:, 2] - before[:, 2], step.expand(2, -1), atol=1e-5, rtol=0)
    assert torch.equal(after[:, others], before[:, others])


def test_memory_token_i_gets_position_row_i():
    """VisualMemory (the linear path, and E and P of the T5 path): token ``i`` of a window
    shorter than the table gets table row ``i``."""
    torch.manual_seed(0)
    vm_memory = VisualMemory(global_dim=8, memory_dim=6, max_tokens=30)
    with torch.no_grad():
        vm_memory.pos.normal_()  # positions as large as the rest, so a wrong row shows
        tokens = torch.randn(2, 4, 8)
        got = vm_memory(tokens)
        without = vm_memory.proj(vm_memory.norm(tokens))
    torch.testing.assert_close(got - without, vm_memory.pos[:4].expand(2, -1, -1), atol=1e-6, rtol=0)


def test_each_lora_update_is_scaled_by_alpha_over_rank(base_t5):
    """Every LoRA layer on the T5 adds ``alpha / rank * B A x`` to the frozen projection."""
    vm = adapted(base_t5, perturbed=True)
    config = vm.config
    scale = config.lora_alpha / config.lora_rank
    assert scale != 1  # the check below tells alpha / rank from 1
    layers = [m for m in vm.lm.video_inputs.memory.t5.modules() if hasattr(m, "lora_A")]
    assert len(layers) == len(vm.lm.video_inputs.memory.lora)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers:
            x = torch.randn(3, layer.in_features, generator=g)
            a, b = layer.lora_A["default"], layer.lora_B["default"]
            assert a.out_features == config.lora_rank
            update = b(a(x))
            assert update.abs().max() > 1e-2  # the perturbed B is far from zero
            torch.testing.assert_close(layer(x) - layer.base_layer(x), scale * update, atol=1e-5, rtol=1e-5)
