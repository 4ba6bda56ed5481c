"""Which rows of the model batch the adapters reach, and how long the streaming caches live."""

from __future__ import annotations

import pytest
import torch

from conftest import perturb_adapters, random_video_batch, tiny_config
from test_adapters import codes_for, logits, null_text
from vidmusician import attach_adapters
from vidmusician.adapter.context import VideoContext

# (samples' videos, the model batch's branches (None: audiocraft's own layout), model rows,
# the model rows that carry video)
LAYOUTS = [
    ([True, False, True], None, 3, [0, 2]),  # one row per sample, a null video between: scattered
    ([True, True], None, 4, [0, 1]),  # CFG's [cond; uncond]: the first half, one span
    ([False, True], (True, False, False), 6, [1]),  # guidance's [text+video; text; null]
    ([True, True], (False, True), 4, [2, 3]),  # the video in a later branch
    ([False, False], None, 2, []),  # null videos only: nothing to adapt
]


def context_for(present, branches, model_rows):
    ctx = VideoContext(max_global_tokens=8)
    ctx.set(random_video_batch(len(present), present), branches=branches)
    ctx.begin_forward(model_rows, position=0, steps=3, device="cpu", inputs=None)
    return ctx


@pytest.mark.parametrize("present, branches, model_rows, video_rows", LAYOUTS)
@pytest.mark.parametrize("writable, grad", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("converts", [False, True])
def test_adapters_reach_exactly_the_video_rows(present, branches, model_rows, video_rows, writable, grad, converts):
    """The one path from the adapters to the hidden states, for every layout and mode: the
    video rows get the delta, every other row keeps its bits, and ``x`` is written only
    when ``writable`` (an adapter that converts dtypes returns a copy even in place)."""
    ctx = context_for(present, branches, model_rows)
    x = torch.randn(model_rows, 3, 4, generator=torch.Generator().manual_seed(0), requires_grad=grad)
    before = x.detach().clone()
    seen = []

    def adapt(rows, in_place):
        seen.append(rows.shape[0])
        if converts:
            return (rows.double() + 1).to(rows.dtype)
        return rows.add_(1) if in_place else rows + 1

    with torch.set_grad_enabled(grad):
        out = ctx.apply_to_video_rows(x, adapt, writable)
    others = [i for i in range(model_rows) if i not in video_rows]
    assert seen == ([len(video_rows)] if video_rows else [])
    assert torch.equal(out[video_rows].detach(), before[video_rows] + 1)
    assert torch.equal(out[others].detach(), before[others])
    if writable:
        assert out is x
    else:
        assert torch.equal(x.detach(), before)  # the input is left as it was
    if video_rows:
        # Each video row reads its own sample's video, in whichever branch it lies.
        assert ctx.video_rows().tolist() == [i % len(present) for i in video_rows]
    if grad and video_rows:
        out.sum().backward()  # the rows' delta keeps autograd's graph intact
        assert torch.equal(x.grad, torch.ones_like(x))


def last_step(vm, codes, cond, videos):
    """The last step's logits of one stream: ``videos[0]`` set for the first 10 steps, then ``videos[1]``."""
    with vm.lm.streaming(), torch.no_grad():
        for video, chunk in zip(videos, (codes[..., :10], codes[..., 10:11])):
            vm.set_video(video)
            out = vm.lm(chunk, [], condition_tensors=cond)
    vm.set_video(None)
    return out


@pytest.mark.parametrize("group", ["semantic", "rhythm"])
def test_a_new_video_mid_stream_reaches_each_adapter(tiny, group):
    """Each adapter alone: what it keeps for the window while streaming (the folded memory,
    the in-attention states computed ahead) is dropped when the video changes."""
    musicgen = tiny()
    only = {"rhythm_layers": []} if group == "semantic" else {"semantic_layers": []}
    vm = attach_adapters(musicgen, tiny_config(musicgen, **only))
    perturb_adapters(vm)
    codes = codes_for(musicgen, batch=2, steps=11)
    cond = vm.lm.condition_provider(vm.lm.condition_provider.tokenize(null_text(2)))
    first, second = (random_video_batch(2, [True, True], seed=seed) for seed in (0, 5))
    kept = last_step(vm, codes, cond, [first, first])
    switched = last_step(vm, codes, cond, [first, second])
    assert not torch.allclose(kept, switched, atol=1e-4)


@pytest.mark.numerics
def test_a_short_video_beside_a_long_one_over_several_windows(tiny):
    """A real batch mixes lengths: in a later window the short video has no frame left.
    Its row must stay finite (attention over no key at all is NaN, and NaN times the
    zeroed values is still NaN) and get exactly the base model's logits, while the long
    video's row is still conditioned."""
    base, musicgen = tiny(), tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen, rhythm_layers=[]))  # the semantic adapter alone
    perturb_adapters(vm)
    frame_rate = musicgen.compression_model.frame_rate
    video = random_video_batch(2, [True, True], num_frames=int(12 * frame_rate), num_global=10,
                               frame_rate=frame_rate)
    video.global_mask[0, 2:] = False  # 2 s beside 10 s
    codes = codes_for(musicgen, steps=12)
    ref, mask = logits(base.lm, codes)
    for second in (0, 4, 8):  # windows from 0 s (both have frames), 4 s and 8 s (only the long one)
        with vm.video(video, frame_offset=int(second * frame_rate)):
            got, _ = logits(vm.lm, codes)
        assert got[mask].isfinite().all(), second
        assert not torch.allclose(got[1][mask[1]], ref[1][mask[1]], atol=1e-3), second
        if second >= 2:
            assert torch.equal(got[0][mask[0]], ref[0][mask[0]]), second
        else:
            assert not torch.allclose(got[0][mask[0]], ref[0][mask[0]], atol=1e-3)


@pytest.mark.parametrize("seconds, first, count", [(6.5, 7, 2), (7.5, 8, 2), (6.4, 6, 2), (6.0, 6, 2), (13.0, 13, 2)])
def test_a_window_reads_the_global_frames_of_its_own_stretch(seconds, first, count):
    """From the global frame nearest its start (half way: the later one, for every parity) for its length."""
    batch = random_video_batch(1, [True], num_frames=800, num_global=16)  # 16 s
    ctx = VideoContext(max_global_tokens=8)
    ctx.set(batch, frame_offset=round(seconds * 50), frames=75)  # 1.5 s: two frames cover it
    ctx.begin_forward(1, position=0, steps=1, device="cpu", inputs=None)
    tokens, mask = ctx.global_window()
    assert torch.equal(tokens[0], batch.global_feats[0, first:first + count]) and mask.all()
    ctx.set(batch, frame_offset=round(seconds * 50))  # no length: the memory's 8 frames
    ctx.begin_forward(1, position=0, steps=1, device="cpu", inputs=None)
    assert torch.equal(ctx.global_window()[0][0], batch.global_feats[0, first:first + 8])
