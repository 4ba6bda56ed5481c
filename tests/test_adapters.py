"""The adapters wired into a frozen MusicGen: exact at init, connected when perturbed."""

from __future__ import annotations

import contextlib

import pytest
import torch
from audiocraft.modules.conditioners import ConditioningAttributes

from conftest import DEVICES, perturb_adapters, random_video_batch, tiny_config
from vidmusician import attach_adapters
from vidmusician.errors import AdapterError, BackboneError, ConfigError


def null_text(n):
    return [ConditioningAttributes(text={"description": None}) for _ in range(n)]


# Streaming (one step at a time) against a full forward: the matrix products reduce in
# other orders, so the logits differ by rounding. MEASURED (scripts/numerics_spread.py,
# seeds 0-2, ATen default/avx2/avx512 kernels x 1 and 2 threads, AVX-512 CPU): up to 3.6e-5
# here and 4.6e-5 on the t5-lora path; an H100 gave 1.9e-5, another AVX-512 CPU 1.2e-5.
# The bound sits ~10x above; a frame off in the timeline moves logits by 1e-2 or more.
STREAMING_TOL = 5e-4


def codes_for(musicgen, batch=2, steps=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, musicgen.lm.card, (batch, musicgen.lm.num_codebooks, steps), generator=g)
    return codes.to(musicgen.device)


def logits(lm, codes):
    out = lm.compute_predictions(codes, null_text(codes.shape[0]))
    return out.logits, out.mask


@pytest.mark.numerics
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rank", [None, 4])
def test_identity_at_init_logits(tiny, rank, device):
    base, adapted = tiny(device=device), tiny(device=device)
    vm = attach_adapters(adapted, tiny_config(adapted, rhythm_rank=rank))
    codes = codes_for(base)
    ref, mask = logits(base.lm, codes)
    with vm.video(random_video_batch(2, [True, True])):
        got, _ = logits(vm.lm, codes)
    assert torch.equal(got[mask], ref[mask])


@pytest.mark.parametrize("device", DEVICES)
def test_identity_at_init_under_autocast(tiny, device):
    """Mixed precision (as audiocraft runs generation on GPUs, in float16): the adapters
    must not round the hidden states to the autocast dtype, in training or in generation."""
    base, adapted = tiny(device=device), tiny(device=device)
    vm = attach_adapters(adapted, tiny_config(adapted))
    codes = codes_for(base, steps=12)
    cond = base.lm.condition_provider(base.lm.condition_provider.tokenize(null_text(2)))
    autocast = torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16)
    with autocast:
        ref, mask = logits(base.lm, codes)
        ref_streamed = streamed_logits(base.lm, codes, cond)
        with vm.video(random_video_batch(2, [True, True])):
            got, _ = logits(vm.lm, codes)
            got_streamed = streamed_logits(vm.lm, codes, cond)
    assert torch.equal(got[mask], ref[mask])
    assert torch.equal(got_streamed, ref_streamed)
    # Perturbed, the adapters reach the video rows under autocast too, and only them.
    perturb_adapters(vm)
    with autocast, vm.video(random_video_batch(2, [True, False])):
        got, _ = logits(vm.lm, codes)
        got_streamed = streamed_logits(vm.lm, codes, cond)
    assert not torch.allclose(got[0][mask[0]], ref[0][mask[0]], atol=1e-2)
    assert not torch.allclose(got_streamed[0], ref_streamed[0], atol=1e-2)
    assert torch.equal(got[1][mask[1]], ref[1][mask[1]]) and torch.equal(got_streamed[1], ref_streamed[1])


@pytest.mark.numerics
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("present", [[True, False], [False, True, True], [True, False, True]])
def test_perturbed_adapter_changes_video_rows_only(tiny, present, device):
    base, adapted = tiny(device=device), tiny(device=device)
    vm = attach_adapters(adapted, tiny_config(adapted))
    perturb_adapters(vm)
    n = len(present)
    codes = codes_for(base, batch=n)
    ref, mask = logits(base.lm, codes)
    video = random_video_batch(n, present)
    with vm.video(video):
        got, _ = logits(vm.lm, codes)
    for i, has_video in enumerate(present):
        if has_video:
            assert not torch.allclose(got[i][mask[i]], ref[i][mask[i]], atol=1e-3)
            # Each row gets its own video: the same as running that sample alone.
            single = random_video_batch(1, [True])
            single.global_feats, single.local = video.global_feats[i:i + 1], video.local[i:i + 1]
            with vm.video(single):
                alone, _ = logits(vm.lm, codes[i:i + 1])
            torch.testing.assert_close(got[i][mask[i]], alone[0][mask[i]], atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(got[i][mask[i]], ref[i][mask[i]])  # null video: exactly the base model
    # With no video set at all the model is the base model too.
    got_none, _ = logits(vm.lm, codes)
    assert torch.equal(got_none[mask], ref[mask])


@pytest.mark.parametrize("group", ["semantic", "rhythm"])
def test_each_adapter_group_is_wired(tiny, group):
    base, adapted = tiny(), tiny()
    vm = attach_adapters(adapted, tiny_config(adapted))
    from vidmusician.adapter.wiring import adapter_modules

    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in adapter_modules(vm.lm)[group].values():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    codes = codes_for(base)
    ref, mask = logits(base.lm, codes)
    with vm.video(random_video_batch(2, [True, True])):
        got, _ = logits(vm.lm, codes)
    assert not torch.allclose(got[mask], ref[mask], atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_cfg_batch_gives_null_video_to_the_unconditional_half(tiny, device):
    base, adapted = tiny(device=device), tiny(device=device)
    vm = attach_adapters(adapted, tiny_config(adapted))
    perturb_adapters(vm)
    codes = codes_for(base, batch=2)
    doubled = torch.cat([codes, codes])  # what lm.generate feeds with CFG: [cond; uncond]
    cond = base.lm.condition_provider(base.lm.condition_provider.tokenize(null_text(4)))
    ref = base.lm(doubled, [], condition_tensors=cond)
    with vm.video(random_video_batch(2, [True, True])):
        got = vm.lm(doubled, [], condition_tensors=cond)
    assert not torch.allclose(got[:2], ref[:2], atol=1e-3)
    assert torch.equal(got[2:], ref[2:])


def test_batch_size_mismatch_is_a_clear_error(tiny):
    adapted = tiny()
    vm = attach_adapters(adapted, tiny_config(adapted))
    with vm.video(random_video_batch(3, [True] * 3)), pytest.raises(ConfigError, match="3 samples"):
        logits(vm.lm, codes_for(adapted, batch=2))


def generate_tokens(musicgen, n, seed):
    musicgen.set_generation_params(duration=0.5, use_sampling=True, top_k=50, cfg_coef=3.0)
    torch.manual_seed(seed)
    return musicgen.generate([None] * n, return_tokens=True)[1]


@pytest.mark.parametrize("device", DEVICES)
def test_generate_identity_at_init_and_change_when_perturbed(tiny, device):
    """On a GPU, MusicGen generates under float16 autocast."""
    base, adapted = tiny(device=device), tiny(device=device)
    vm = attach_adapters(adapted, tiny_config(adapted))
    ref = generate_tokens(base, 2, seed=7)
    with vm.video(random_video_batch(2, [True, True])):
        same = generate_tokens(adapted, 2, seed=7)
    assert torch.equal(same, ref)
    # A moderate perturbation: at scale 2 the rhythm chain's random full-rank updates grow
    # the residual stream past float16's range (~4e6 in float32), which says nothing of wiring.
    perturb_adapters(vm)
    with vm.video(random_video_batch(2, [True, False])):
        moved = generate_tokens(adapted, 2, seed=7)
    assert not torch.equal(moved[0], ref[0])


def test_perturbed_adapters_stay_finite_under_float16_autocast(tiny):
    """MusicGen generates under float16 autocast on a GPU: the adapters' masked attention over
    a null video (no global tokens) and their updates must not turn into inf or NaN there.
    Checked on the CPU's float16 autocast, against the float32 logits."""
    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm)
    codes = codes_for(musicgen)
    with vm.video(random_video_batch(2, [True, False])):
        want, mask = logits(vm.lm, codes)
        with torch.autocast("cpu", dtype=torch.float16):
            got, _ = logits(vm.lm, codes)
    assert torch.isfinite(got[mask]).all()
    assert torch.allclose(got[mask].float(), want[mask], atol=0.1)


def test_disabled_adapters_run_the_base_model_and_come_back(tiny):
    base, adapted = tiny(), tiny()
    vm = attach_adapters(adapted, tiny_config(adapted))
    perturb_adapters(vm)
    codes = codes_for(base)
    ref, mask = logits(base.lm, codes)
    keys = set(vm.adapter_state_dict())
    with vm.video(random_video_batch(2, [True, True])):
        moved, _ = logits(vm.lm, codes)
        with vm.disable_adapters():
            off, _ = logits(vm.lm, codes)
            assert set(vm.adapter_state_dict()) == keys  # still reachable: saving works inside
            with pytest.raises(ConfigError, match="already disabled"), vm.disable_adapters():
                pass
        back, _ = logits(vm.lm, codes)
    assert not torch.allclose(moved[mask], ref[mask], atol=1e-3)
    assert torch.equal(off[mask], ref[mask])
    assert torch.equal(back[mask], moved[mask])
    with vm.video(random_video_batch(2, [True, True])), vm.disable_adapters():
        assert torch.equal(generate_tokens(adapted, 2, seed=7), generate_tokens(base, 2, seed=7))


def test_adapters_disabled_mid_stream_are_a_null_video_for_those_steps(tiny):
    """Toggled step by step while streaming (as the overhead benchmark does), the
    enabled steps still read the video at their own positions."""
    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm)
    codes = codes_for(musicgen, steps=12)
    cond = musicgen.lm.condition_provider(musicgen.lm.condition_provider.tokenize(null_text(2)))
    video = random_video_batch(2, [True, False])

    def stream(step_without_video):
        steps = []
        vm.set_video(video)
        with musicgen.lm.streaming(), torch.no_grad():
            for t in range(codes.shape[-1]):
                with step_without_video(t % 3 == 1):
                    steps.append(musicgen.lm(codes[..., t:t + 1], [], condition_tensors=cond))
        vm.set_video(None)
        return torch.cat(steps, dim=2)

    @contextlib.contextmanager
    def null_video(active):
        if active:
            vm.set_video(None)
        yield
        if active:
            vm.set_video(video)

    disabled = stream(lambda active: vm.disable_adapters() if active else contextlib.nullcontext())
    assert torch.equal(disabled, stream(null_video))
    assert not torch.allclose(disabled, stream(lambda active: contextlib.nullcontext()), atol=1e-3)


def test_two_step_cfg_is_refused(tiny):
    adapted = tiny()
    vm = attach_adapters(adapted, tiny_config(adapted))
    adapted.set_generation_params(duration=0.2, two_step_cfg=True)
    with vm.video(random_video_batch(1, [True])), pytest.raises(ConfigError, match="two_step_cfg"):
        adapted.generate([None])


def test_prepend_fused_models_are_refused(tiny):
    musicgen = tiny()
    musicgen.lm.fuser.fuse2cond["prepend"] = ["self_wav"]
    with pytest.raises(BackboneError, match="prepend"):
        attach_adapters(musicgen, tiny_config(musicgen))


def test_attaching_twice_is_refused(tiny):
    musicgen = tiny()
    attach_adapters(musicgen, tiny_config(musicgen))
    with pytest.raises(BackboneError, match="already attached"):
        attach_adapters(musicgen, tiny_config(musicgen))


def test_config_must_fit_backbone(tiny):
    small, wide = tiny(), tiny(dim=64)
    with pytest.raises(AdapterError, match=r"does not match backbone 'tiny' \(dim: adapter 32 vs backbone 64\)"):
        attach_adapters(wide, tiny_config(small))


def streamed_logits(lm, codes, cond, prompt=5, grad=False):
    """Logits as generation computes them: a prompt chunk, then one step at a time,
    without autograd (the wrappers then update rows in place)."""
    steps = []
    with lm.streaming(), torch.set_grad_enabled(grad):
        steps.append(lm(codes[..., :prompt], [], condition_tensors=cond))
        for t in range(prompt, codes.shape[-1]):
            steps.append(lm(codes[..., t:t + 1], [], condition_tensors=cond))
    return torch.cat(steps, dim=2)


# Rows [True, True, False] take the contiguous-rows path, [True, False, True] the indexed
# one; a chunk of 4 steps makes the cached in-attention states roll over several times.
@pytest.mark.numerics
@pytest.mark.parametrize("present", [[True, False], [True, True, False], [True, False, True]])
@pytest.mark.parametrize("frame_offset", [0, 7])
@pytest.mark.parametrize("device", DEVICES)
def test_streaming_equals_full_forward(tiny, monkeypatch, device, frame_offset, present):
    import vidmusician.adapter.wiring

    monkeypatch.setattr(vidmusician.adapter.wiring, "RHYTHM_CHUNK", 4)
    musicgen = tiny(device=device)
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm)
    lm = vm.lm
    n = len(present)
    codes = codes_for(musicgen, batch=n, steps=30)
    cond = lm.condition_provider(lm.condition_provider.tokenize(null_text(n)))
    with vm.video(random_video_batch(n, present), frame_offset=frame_offset):
        full = lm(codes, [], condition_tensors=cond)
        streamed = streamed_logits(lm, codes, cond)
    torch.testing.assert_close(streamed, full, atol=STREAMING_TOL, rtol=1e-5)
    # The offset matters: the same tokens under another offset give other logits.
    with vm.video(random_video_batch(n, present), frame_offset=frame_offset + 3):
        shifted = lm(codes, [], condition_tensors=cond)
    assert not torch.allclose(shifted[0], full[0], atol=1e-4)


def test_in_place_rows_with_a_backbone_in_another_dtype(tiny):
    """A bf16 backbone with fp32 adapters: the in-place path writes the adapted rows back."""
    from vidmusician.adapter.wiring import adapter_modules

    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm)
    lm = vm.lm.to(torch.bfloat16)
    for group in adapter_modules(lm).values():
        for module in group.values():
            module.float()
    codes = codes_for(musicgen, batch=2, steps=12)
    cond = lm.condition_provider(lm.condition_provider.tokenize(null_text(2)))
    with vm.video(random_video_batch(2, [True, False])):
        in_place = streamed_logits(lm, codes, cond)
        copied = streamed_logits(lm, codes, cond, grad=True)  # autograd on: rows are copied, not updated
    base = streamed_logits(lm, codes, cond)
    assert in_place.dtype == torch.bfloat16
    torch.testing.assert_close(in_place, copied.detach(), atol=0, rtol=0)
    assert not torch.equal(in_place[0], base[0])
    assert torch.equal(in_place[1], base[1])


@pytest.mark.parametrize("device", DEVICES)
def test_only_adapters_move_in_an_optimizer_step(tiny, device):
    musicgen = tiny(device=device)
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm, scale=0.1)
    vm.set_trainable(["semantic", "rhythm"])
    vm.train()
    before = {k: v.clone() for k, v in vm.lm.state_dict().items()}
    adapter_keys = set(vm.adapter_state_dict())
    opt = torch.optim.AdamW(vm.trainable_parameters(), lr=1e-2)
    codes = codes_for(musicgen)
    out = vm.compute_predictions(codes, random_video_batch(2, [True, True]))
    loss = torch.nn.functional.cross_entropy(out.logits[out.mask], codes[out.mask])
    loss.backward()
    opt.step()
    after = vm.lm.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and moved <= adapter_keys
    assert not vm.lm.training  # the frozen backbone stays in eval mode
    assert all(not p.requires_grad for k, p in vm.lm.named_parameters() if k not in adapter_keys)


def test_stages_select_groups_by_structure(tiny):
    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    from vidmusician.adapter.wiring import adapter_modules

    groups = adapter_modules(vm.lm)
    for stage, group, other in ((1, "semantic", "rhythm"), (2, "rhythm", "semantic")):
        vm.set_stage(stage)
        assert all(p.requires_grad for m in groups[group].values() for p in m.parameters())
        assert not any(p.requires_grad for m in groups[other].values() for p in m.parameters())
    counts = vm.parameter_counts()
    assert counts["trainable"] == counts["rhythm"] > 0
    assert counts["backbone"] == sum(p.numel() for p in tiny().lm.parameters())


def test_what_a_stage_trains_comes_from_one_table(tiny, monkeypatch):
    """config.STAGE_GROUPS alone says what a stage trains: the adapter config, the
    recipe, attach_adapters, set_stage and the trainer's model all follow it."""
    import types

    from conftest import TINY_GLOBAL_DIM, TINY_LOCAL_DIM
    from vidmusician.config import STAGE_GROUPS
    from vidmusician.training.dataset import DatasetMeta
    from vidmusician.adapter.wiring import adapter_modules
    from vidmusician.training.recipe import Recipe
    from vidmusician.training.model_setup import build_model

    monkeypatch.setitem(STAGE_GROUPS, 1, ("rhythm",))
    monkeypatch.setitem(STAGE_GROUPS, 3, ("semantic", "rhythm"))

    def trainable(vm):
        return {id(p) for p in vm.lm.parameters() if p.requires_grad}

    def group(vm, name):
        return {id(p) for m in adapter_modules(vm.lm)[name].values() for p in m.parameters()}

    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen, stage=3))
    assert trainable(vm) == group(vm, "semantic") | group(vm, "rhythm")
    vm.set_stage(1)
    assert trainable(vm) == group(vm, "rhythm")
    with pytest.raises(ConfigError, match=r"^recipe: stage must be 1, 2 or 3, got 4$"):
        Recipe(stage=4)
    meta = DatasetMeta(backbone="tiny", sample_rate=32000, channels=1, frame_rate=float(musicgen.frame_rate), n_q=4,
                       card=musicgen.lm.card, encoder="tiny", global_dim=TINY_GLOBAL_DIM, local_dim=TINY_LOCAL_DIM,
                       global_fps=1.0, local_fps=25.0, window=4.0, hop=4.0)
    args = types.SimpleNamespace(backbone=None, data="ds", init=None)
    trained = build_model(args, Recipe(stage=1, adapter=dict(memory_dim=32, attn_dim=16, attn_heads=2)), meta, "cpu")
    assert trained.config.stage == 1 and trainable(trained) == group(trained, "rhythm")


@pytest.mark.numerics
def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    grads = []
    for checkpointing in (False, True):
        musicgen = tiny()
        torch.manual_seed(0)  # the adapters' random parts (q, kv, positions) must match across runs
        vm = attach_adapters(musicgen, tiny_config(musicgen))
        perturb_adapters(vm, scale=0.1)
        vm.set_trainable(["semantic", "rhythm"])
        vm.enable_gradient_checkpointing(checkpointing)
        calls = []  # a checkpointed base layer runs again in backward
        base_layer = vm.lm.video_inputs.layers[0].base_layer
        base_layer.register_forward_pre_hook(lambda *_: calls.append(1))
        codes = codes_for(musicgen)
        out = vm.compute_predictions(codes, random_video_batch(2, [True, True]))
        torch.nn.functional.cross_entropy(out.logits[out.mask], codes[out.mask]).backward()
        assert len(calls) == (2 if checkpointing else 1)
        grads.append([p.grad.clone() for p in vm.trainable_parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_print_trainable_parameters(tiny, capsys):
    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    vm.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"trainable params: {vm.parameter_counts()['trainable']:,} || all params: ")
