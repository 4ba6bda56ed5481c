"""Text and video guided apart: ``null + t (text - null) + v (text_video - text)``.

Three branches ``[text+video; text; null]`` in one batch where ``t != v``; the
two-branch batch of MusicGen where the third adds nothing. Everything runs on the
tiny backbone with perturbed adapters (so the video acts) and its 50 Hz codec (the real one's).
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import perturb_adapters, random_video_batch, tiny_config
from vidmusician import cli
from vidmusician.adapter.audiocraft_internals import text_conditions
from vidmusician.random_backbones import TINY_CODEC, tiny_musicgen
from vidmusician.errors import ConfigError
from vidmusician.model import attach_adapters
from vidmusician.generation.guidance import GenerationParams, Guidance, guidance_conditions, guided_logits

FRAME_RATE = TINY_CODEC["frame_rate"]  # the tiny backbone's codec (checked by the base fixture)
TEXTS = ["piano", "drums"]


@pytest.fixture(scope="module")
def base():
    """One tiny MusicGen per module; tests take deep copies (building one runs k-means)."""
    musicgen = tiny_musicgen()
    assert musicgen.frame_rate == FRAME_RATE
    return musicgen


def adapted(base, max_duration=None):
    """A tiny VidMusician whose adapters act: perturbed away from their identity init."""
    musicgen = copy.deepcopy(base)
    if max_duration is not None:
        musicgen.max_duration = max_duration
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm, scale=0.1)
    return vm


def video(present=(True, False), seconds=0.5):
    """Random features of ``seconds`` per sample; ``present[i]`` False: a null video."""
    return random_video_batch(len(present), list(present), num_frames=int(seconds * FRAME_RATE))


def sample(vm, videos, seed=3, duration=None, **coefs):
    """The codes ``vm.generate`` samples with these guidance coefficients."""
    vm.set_generation_params(**coefs)
    return vm.generate(videos, texts=TEXTS, duration=duration, seed=seed, return_tokens=True)[1]


def record_lm(lm, log):
    """Logs every LM forward's raw logits (all branches' rows)."""
    return lm.register_forward_hook(lambda m, args, out: log.append(out.detach().clone()))


# --------------------------------------------------------------------------- #
# Which batch runs


@pytest.mark.parametrize("coefs, has_video, rows, why", [
    (dict(cfg_coef=3.0), True, (True, False), "two branches, video in cond"),
    (dict(text_cfg_coef=2.0, video_cfg_coef=2.0), True, (True, False), "t == v: two branches"),
    (dict(cfg_coef=4.0, video_cfg_coef=0.0), True, (False, False), "v == 0: plain MusicGen"),
    (dict(text_cfg_coef=2.0, video_cfg_coef=5.0), False, (False, False), "no video: two branches"),
    (dict(text_cfg_coef=2.0), True, (True, False, False), "t != v: three branches"),
])
def test_the_cheapest_batch_that_computes_the_guidance(coefs, has_video, rows, why):
    g = GenerationParams(**coefs).guidance(has_video)
    assert g.video == rows, why
    assert g.text == ((True, True, False) if len(rows) == 3 else (True, False))
    assert g.text_coef == coefs.get("text_cfg_coef", coefs.get("cfg_coef", 3.0))
    if len(rows) == 3:
        assert g.video_coef == coefs.get("video_cfg_coef", 3.0)


@pytest.mark.numerics
def test_without_any_prompt_the_text_branch_is_the_null_branch(base):
    """No text in the batch: [text+video; null] with v alone, and it equals the three-branch logits."""
    g = GenerationParams(text_cfg_coef=2.0, video_cfg_coef=5.0).guidance(has_video=True, has_text=False)
    assert (g.video, g.text, g.text_coef) == ((True, False), (True, False), 5.0)
    vm = adapted(base)
    videos = video()
    _, three = forward_once(vm, Guidance.three_branch(2.0, 5.0, g.plausibility), videos, texts=[None, None])
    raw, two = forward_once(vm, g, videos, texts=[None, None])
    assert raw.shape[0] == 2 * videos.size
    torch.testing.assert_close(three, two, rtol=1e-5, atol=1e-4)
    # Had the text coefficient been used, the guided logits would differ.
    _, wrong = forward_once(vm, Guidance.two_branch(2.0, plausibility=g.plausibility), videos, texts=[None, None])
    assert not torch.allclose(wrong, two, atol=1e-3)
    # generate() finds that no sample has a prompt: every step runs two branches.
    log = []
    hook = record_lm(vm.lm, log)
    try:
        vm.set_generation_params(text_cfg_coef=2.0, video_cfg_coef=5.0)
        vm.generate(videos, texts=[None, None], duration=0.2, seed=0)
    finally:
        hook.remove()
    assert {out.shape[0] for out in log} == {2 * videos.size}


@pytest.mark.parametrize("name", ["cfg_coef", "text_cfg_coef", "video_cfg_coef"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "3"])
def test_bad_coefficients_are_refused(name, value):
    with pytest.raises(ConfigError, match=rf"{name} must be a number in \[0, 10\]"):
        GenerationParams(**{name: value})


# --------------------------------------------------------------------------- #
# Equal coefficients: today's guidance


def test_equal_coefficients_sample_todays_tokens_in_todays_batch(base):
    """With the plausibility cut off (0), MusicGen's guidance; see test_guidance_filter.py for the cut."""
    vm = adapted(base)
    videos = video()
    # Today's path: audiocraft's own LMModel.generate, CFG [cond; uncond] of 2B rows.
    attributes = text_conditions(vm.musicgen, TEXTS)
    torch.manual_seed(3)
    with vm.video(videos, frames=FRAME_RATE // 2):
        today = vm.lm.generate(None, attributes, max_gen_len=FRAME_RATE // 2, use_sampling=True, top_k=250,
                               cfg_coef=2.5)
    rows = []
    vm.lm.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    assert torch.equal(sample(vm, videos, cfg_coef=2.5, plausibility=0.0), today)
    assert torch.equal(sample(vm, videos, text_cfg_coef=2.5, video_cfg_coef=2.5, plausibility=0.0), today)
    assert set(rows) == {4}  # two branches of two samples: the cost of today's step
    # The video does act here: without it the tokens differ.
    assert not torch.equal(sample(vm, videos, cfg_coef=2.5, video_cfg_coef=0.0, plausibility=0.0), today)


def forward_once(vm, guidance, videos, steps=6, seed=0, texts=None):
    """Raw [rows, K, steps, card] and guided [B, K, card] logits of one full forward."""
    B = videos.size
    g = torch.Generator().manual_seed(seed)
    sequence = torch.randint(0, vm.lm.card, (B, vm.lm.num_codebooks, steps), generator=g)
    attributes = text_conditions(vm.musicgen, TEXTS[:B] if texts is None else texts)
    conditions = guidance_conditions(vm.lm, attributes, guidance)
    log = []
    hook = record_lm(vm.lm, log)
    vm.context.set(vm.make_batch(videos), 0, branches=guidance.video)
    try:
        with torch.no_grad():
            guided = guided_logits(vm.lm, sequence, conditions, guidance)
    finally:
        vm.context.set(None)
        hook.remove()
    return log[0], guided


@pytest.mark.parametrize("t, v, two", [(2.5, 2.5, Guidance.two_branch(2.5)),
                                       (2.5, 0.0, Guidance.two_branch(2.5, video=False))])
@pytest.mark.numerics
def test_three_branches_reduce_to_two_up_to_rounding(base, t, v, two):
    vm = adapted(base)
    videos = video()
    _, three = forward_once(vm, Guidance.three_branch(t, v), videos)
    _, reference = forward_once(vm, two, videos)
    torch.testing.assert_close(three, reference, rtol=1e-5, atol=1e-4)
    # ...and the reference is not the same with and without the video.
    _, other = forward_once(vm, Guidance.two_branch(2.5, video=v == 0), videos)
    assert not torch.allclose(other[0], reference[0], atol=1e-3)


# --------------------------------------------------------------------------- #
# The video reaches the text+video rows, and nothing else


def test_only_text_video_rows_get_the_video_in_a_three_branch_step(base):
    vm = adapted(base)
    videos = video((True, False))  # a video and a null video
    guidance = Guidance.three_branch(2.0, 5.0)
    raw, guided = forward_once(vm, guidance, videos)
    with vm.disable_adapters():
        plain, plain_guided = forward_once(vm, guidance, videos)
    tv, text, null = raw.split(2)
    assert torch.equal(text, plain[2:4]) and torch.equal(null, plain[4:])  # no video there
    assert not torch.allclose(tv[0], plain[0], atol=1e-3)  # the video row does get it
    assert torch.equal(tv[1], plain[1])  # the null video's text+video row is its text row
    assert torch.equal(tv[1], text[1])
    assert not torch.allclose(guided[0], plain_guided[0], atol=1e-3)
    assert torch.equal(guided[1], plain_guided[1])


def test_every_streaming_step_of_every_window_routes_the_video_to_its_rows(base):
    """A long video (3 windows of 1 s), a batch with a null video, three branches."""
    vm = adapted(base, max_duration=1)
    videos = video((False, True), seconds=2.0)
    seen = []
    ctx = vm.context
    vm.lm.video_inputs.layers[0].register_forward_pre_hook(
        lambda m, args: seen.append((ctx.frame_offset, ctx.steps, args[0].shape[0], tuple(ctx.rows.tolist()))))
    tokens = sample(vm, videos, text_cfg_coef=2.0, video_cfg_coef=5.0, extend_stride=0.5)
    assert tokens.shape == (2, 4, 2 * FRAME_RATE)
    assert sorted({offset for offset, *_ in seen}) == [0, FRAME_RATE // 2, FRAME_RATE]
    # Every forward: 3 branches of 2 rows; only row 1 (the second sample's text+video row) has video.
    assert {(rows, video_rows) for *_, rows, video_rows in seen} == {(6, (1,))}
    assert sum(steps == 1 for _, steps, *_ in seen) > 1.5 * FRAME_RATE  # one step at a time: streamed


@pytest.mark.parametrize("windows", [1, 3])
def test_video_guidance_changes_only_the_samples_with_video(base, windows):
    """Sampled tokens: the null video's sample is what the base model samples with the
    same coefficients, in every window; the video's sample is not."""
    vm = adapted(base, max_duration=1)
    videos = video((True, False), seconds=(windows + 1) / 2)
    coefs = dict(text_cfg_coef=2.0, video_cfg_coef=5.0, extend_stride=0.5)
    got = sample(vm, videos, **coefs)
    with vm.disable_adapters():
        plain = sample(vm, videos, **coefs)
    assert torch.equal(got[1], plain[1])
    assert not torch.equal(got[0], plain[0])


def test_video_coefficient_zero_is_plain_musicgen_bitwise(base):
    vm = adapted(base)
    videos = video((True, True))
    log = []
    hook = record_lm(vm.lm, log)
    tokens = sample(vm, videos, text_cfg_coef=3.0, video_cfg_coef=0.0)
    hook.remove()
    # Plain MusicGen (no adapters at all), its own generate, guidance 3 on the text.
    plain = copy.deepcopy(base)
    reference_log = []
    record_lm(plain.lm, reference_log)
    plain.set_generation_params(duration=0.5, cfg_coef=3.0)
    torch.manual_seed(3)
    _, reference = plain.generate(TEXTS, return_tokens=True)
    assert torch.equal(tokens, reference)
    assert len(log) == len(reference_log)
    assert all(torch.equal(a, b) for a, b in zip(log, reference_log))


# --------------------------------------------------------------------------- #
# Python API and CLI


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from media import flash_video

    return flash_video(tmp_path_factory.mktemp("media") / "clip.mp4", [0.2, 0.4], duration=0.6)


@pytest.fixture(scope="module")
def adapter_dir(base, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter") / "tiny-adapter"
    adapted(base).save_pretrained(path)
    return path


def test_cli_steers_text_and_video_apart(clip, adapter_dir, tmp_path):
    def music(*flags):
        out = tmp_path / "out.wav"
        assert cli.main(["generate", str(clip), "--adapter", str(adapter_dir), "-o", str(out), "-q",
                         "--seed", "2", "--text", "piano", *flags]) == 0
        return out.read_bytes()

    today = music()  # --cfg-coef 3: text and video together
    assert music("--text-cfg", "3", "--video-cfg", "3") == today
    assert music("--text-cfg", "1") != today  # t = 1, v = 3
    assert music("--video-cfg", "6") != today  # t = 3, v = 6


def test_cli_bad_coefficient_is_one_line(clip, tmp_path, capsys):
    out = tmp_path / "out.wav"
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it, as the console script exits
        cli.main(["generate", str(clip), "--backbone", "tiny", "-o", str(out), "-q", "--video-cfg", "nan"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--video-cfg: must be in [0, 10], got nan" in err[0]
    assert not out.exists()


def test_a_layout_that_does_not_fit_the_model_batch_is_a_clear_error(base):
    vm = adapted(base)
    guidance = Guidance.two_branch(3.0)  # 4 rows for 2 samples...
    attributes = text_conditions(vm.musicgen, TEXTS)
    conditions = guidance_conditions(vm.lm, attributes, guidance)
    sequence = torch.zeros(4, vm.lm.num_codebooks, 1, dtype=torch.long)
    vm.context.set(vm.make_batch(video()), 0, branches=(True, False, False))  # ...told 3 branches
    with pytest.raises(ConfigError, match="2 samples but the model runs 4 rows in 3 branches"):
        vm.lm(sequence, [], condition_tensors=conditions)
