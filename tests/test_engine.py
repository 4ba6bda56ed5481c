"""The static-cache decode engine computes what the reference path computes.

Each case runs one window (or a whole generation) twice, on the reference path
(``sample_window``: audiocraft's streaming forward) and on the engine, and compares
the greedy tokens (identical) and the raw logits of every step (within ``LOGITS_TOL``:
the engine attends over a preallocated cache and runs the in-attention chain one step
at a time, so the last bits differ). Models: tiny, tiny-learned, a tiny T5 backbone,
the stereo layout (8 codebooks, two per delay), and the real small architecture
(24 layers, 1024 wide) for a few steps.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from conftest import NEEDS_CUDA, perturb_adapters, random_video_batch, tiny_config
from vidmusician.generation.engine import DecodeEngine
from vidmusician.generation.engine_select import select_engine
from vidmusician.generation.guidance import GenerationParams, Guidance, guidance_conditions, sample_window
from vidmusician.generation.windows import generate_tokens
from vidmusician.model import attach_adapters
from vidmusician.random_backbones import build, codec_config, lm_config, tiny_musicgen

# Largest difference of a raw logit between the engine and the reference path at any step,
# relative to the step's largest logit (measured on a float32 CPU: 0 without adapters, below 1e-6 with).
LOGITS_TOL = 1e-5
GREEDY = GenerationParams(use_sampling=False, plausibility=0.0)


@pytest.fixture(scope="module")
def tiny_base():
    return tiny_musicgen()


@pytest.fixture(scope="module")
def tiny_t5_base():
    return tiny_musicgen(t5=True)


def adapted(base, scale=0.1, **config):
    musicgen = copy.deepcopy(base)
    vm = attach_adapters(musicgen, tiny_config(musicgen, **config))
    if scale:
        perturb_adapters(vm, scale=scale)
    return vm


def attributes(texts):
    from audiocraft.modules.conditioners import ConditioningAttributes

    return [ConditioningAttributes(text={"description": t}) for t in texts]


def run_both(lm, guidance, frames, params=GREEDY, texts=("piano", "drums"), vm=None, videos=None,
             frame_offset=0, prompt=None, seed=0, graph=True):
    """(reference codes, engine codes, reference logits per step, engine logits per step).

    On CUDA the engine replays a graph, whose logits are not seen (``graph=False``: eager steps).
    """
    B = len(texts)
    conditions = guidance_conditions(lm, attributes(texts), guidance)
    device = next(lm.parameters()).device
    if prompt is None:
        prompt = torch.zeros(B, lm.num_codebooks, 0, dtype=torch.long, device=device)
    ref_logits = []
    hook = lm.register_forward_hook(lambda m, args, out: ref_logits.append(out[:, :, -1].clone()))
    if vm is not None:
        vm.context.set(videos, frame_offset, branches=guidance.video, frames=frames)
    torch.manual_seed(seed)
    try:
        ref = sample_window(lm, prompt, conditions, guidance, frames, params)
    finally:
        hook.remove()
        if vm is not None:
            vm.context.set(None)
    max_len = len(lm.pattern_provider.get_pattern(frames).layout)
    engine = DecodeEngine(lm, B, guidance.branches, max_len, device)
    if not graph:
        engine.graph = None
    eng_logits = []
    forward = engine._forward

    def recording(tokens, start, length):
        out = forward(tokens, start, length)
        if torch.is_tensor(start):  # a step (the prompt's steps fill the cache only)
            eng_logits.append(out[:, :, -1].clone())
        return out

    engine._forward = recording
    torch.manual_seed(seed)
    codes = engine.sample_window(prompt, conditions, guidance, frames, params, videos=videos,
                                 frame_offset=frame_offset,
                                 max_global_tokens=vm.config.max_global_tokens if vm is not None else 0)
    return ref, codes, ref_logits, eng_logits


def assert_logits_close(ref_logits, eng_logits, tol=LOGITS_TOL):
    assert len(ref_logits) == len(eng_logits) > 0
    for step, (a, b) in enumerate(zip(ref_logits, eng_logits)):
        scale = a.abs().max()
        err = ((a - b).abs().max() / scale).item()
        assert err <= tol, f"step {step}: relative logit difference {err:.2e} > {tol:.0e}"


def assert_same(ref, codes, ref_logits, eng_logits, tol=LOGITS_TOL):
    assert_logits_close(ref_logits, eng_logits, tol)
    assert torch.equal(ref, codes)


# --------------------------------------------------------------------------- #
# Greedy tokens and logits, one window


@pytest.mark.numerics
@pytest.mark.parametrize("guidance, texts", [
    (Guidance.two_branch(3.0, video=False), ("piano", "drums")),
    (Guidance.two_branch(3.0, video=False), (None, None)),  # no text
    (Guidance.three_branch(2.0, 5.0), ("piano", None)),  # three branches, no video: the text branch still runs
])
def test_plain_tiny_matches_the_reference(tiny_base, guidance, texts):
    assert_same(*run_both(copy.deepcopy(tiny_base).lm, guidance, 40, texts=texts))


@pytest.mark.numerics
@pytest.mark.parametrize("encoder", ["linear", "t5-lora"])
@pytest.mark.parametrize("guidance", [Guidance.two_branch(3.0), Guidance.three_branch(2.0, 5.0, plausibility=0.01)],
                         ids=["two", "three"])
def test_adapted_tiny_matches_the_reference(tiny_base, tiny_t5_base, encoder, guidance):
    base = tiny_base if encoder == "linear" else tiny_t5_base
    vm = adapted(base, semantic_encoder=encoder)
    videos = random_video_batch(2, [False, True], num_frames=60, num_global=3)  # a null video beside a video
    ref, codes, ref_logits, eng_logits = run_both(vm.lm, guidance, 40, vm=vm, videos=videos)
    assert_same(ref, codes, ref_logits, eng_logits)
    plain = run_both(copy.deepcopy(base).lm, guidance, 40)[0]
    assert not torch.equal(plain[1], codes[1]) and torch.equal(plain[0], codes[0])  # the video acts on its sample


@pytest.mark.numerics
def test_a_prompted_window_later_in_the_video_matches(tiny_base):
    vm = adapted(tiny_base)
    videos = random_video_batch(2, [True, True], num_frames=200, num_global=4)
    prompt = torch.randint(0, 400, (2, 4, 17))
    assert_same(*run_both(vm.lm, Guidance.two_branch(3.0), 45, vm=vm, videos=videos, frame_offset=60, prompt=prompt))


@pytest.mark.numerics
def test_stereo_layout_matches(tiny_base):
    cfg = lm_config(32, 4, 4, n_q=8, card=400)
    cfg.codebooks_pattern.delay.delays = [q // 2 for q in range(8)]  # interleaved stereo: two per delay
    musicgen = build(cfg, codec_config(50, 400, n_q=8), "tiny-stereo", seed=0)
    assert_same(*run_both(musicgen.lm, Guidance.two_branch(3.0, video=False), 30))


def small_lm():
    """An LM of MusicGen-small's architecture (24 layers, 1024 wide), random weights, built in seconds
    (the decode benchmark's builder)."""
    from test_benchmarks import load_script

    return load_script("decode").random_lm("small")


@pytest.mark.numerics
def test_real_small_architecture_matches_for_a_few_steps():
    lm = small_lm()
    assert len(lm.transformer.layers) == 24 and lm.dim == 1024
    assert_same(*run_both(lm, Guidance.two_branch(3.0, video=False), 3, texts=("piano",)))


@pytest.mark.numerics
def test_real_small_architecture_matches_with_adapters():
    """The adapters wired into every layer of a 24-layer, 1024-wide LM (perturbed), a video and a null video."""
    from audiocraft.models import builders
    from audiocraft.models.musicgen import MusicGen

    lm = small_lm()
    codec = builders.get_compression_model(codec_config(50, 2048)).eval()
    musicgen = MusicGen("random-small", codec, lm, max_duration=30)
    vm = attach_adapters(musicgen, tiny_config(musicgen, semantic_encoder="linear"))
    perturb_adapters(vm, scale=0.1)
    assert len(vm.lm.transformer.layers) == 24 and vm.lm.dim == 1024
    videos = random_video_batch(2, [True, False], num_frames=40, num_global=2)
    assert_same(*run_both(vm.lm, Guidance.two_branch(3.0), 3, texts=("piano", "drums"), vm=vm, videos=videos))


@pytest.mark.numerics
def test_learned_base_matches_with_adapters():
    from vidmusician.backbones import load_backbone

    vm = adapted(load_backbone("tiny-learned", device="cpu"))
    videos = random_video_batch(1, [True], num_frames=80, num_global=2)
    assert_same(*run_both(vm.lm, Guidance.two_branch(3.0, plausibility=0.01), 50, texts=("piano",), vm=vm,
                          videos=videos))


# --------------------------------------------------------------------------- #
# Whole generations: windows, batches, seeds


def both_generations(vm, videos, duration, seed=4, **coefs):
    out = []
    for engine in ("reference", "fast"):
        vm.set_generation_params(extend_stride=0.5, **coefs)
        vm.generation_params.engine = engine
        out.append(vm.generate(videos, texts=["piano", "drums"], duration=duration, seed=seed,
                               return_tokens=True)[1])
    return out


def test_a_long_batch_of_videos_of_different_lengths_is_the_reference_greedy(tiny_base, monkeypatch):
    windows = []
    sample_window = DecodeEngine.sample_window
    monkeypatch.setattr(DecodeEngine, "sample_window", lambda self, *a, **k: windows.append(k["frame_offset"])
                        or sample_window(self, *a, **k))
    vm = adapted(tiny_base)
    vm.musicgen.max_duration = 1
    videos = random_video_batch(2, [True, True], num_frames=100, num_global=2)  # two seconds...
    videos.local[1, 25:] = 0
    videos.global_mask[1, 1:] = False  # ... and half a second beside it
    ref, fast = both_generations(vm, videos, 1.9, use_sampling=False, text_cfg_coef=2.0, video_cfg_coef=4.0)
    assert ref.shape == (2, 4, 95)  # windows of 1 s advancing by 0.5 s, the last one shorter
    assert windows == [0, 25, 50]  # the engine ran them
    assert torch.equal(ref, fast)


class Stop(Exception):
    pass


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_on_step_runs_after_every_step_and_its_exception_stops_the_generation(tiny_base, engine, monkeypatch):
    vm = adapted(tiny_base)
    vm.musicgen.max_duration = 1
    videos = random_video_batch(2, [True, False], num_frames=100)
    vm.set_generation_params(extend_stride=0.5, engine=engine)

    def music(on_step=None):
        return vm.generate(videos, texts=["piano", None], duration=1.9, seed=3, return_tokens=True,
                           on_step=on_step)[1]

    # The steps counted apart from on_step: one forward of the LM each (a hook keeps to the reference path).
    forwards = []
    hook = vm.lm.register_forward_pre_hook(lambda *a: forwards.append(1))
    music()
    hook.remove()
    total = len(forwards)
    engine_windows = []
    sample_window = DecodeEngine.sample_window
    monkeypatch.setattr(DecodeEngine, "sample_window", lambda self, *a, **k: engine_windows.append(1)
                        or sample_window(self, *a, **k))
    calls = []
    first = music(lambda done, steps: calls.append((done, steps)))
    assert calls == [(done, total) for done in range(1, total + 1)] and total > 100  # three windows' steps
    assert len(engine_windows) == (3 if engine == "fast" else 0)

    def stop_at_step_5(done, steps):
        calls.append(done)
        if done == 5:
            raise Stop()

    calls.clear()
    with pytest.raises(Stop):
        music(stop_at_step_5)
    assert calls == [1, 2, 3, 4, 5]  # no step after the exception
    assert vm.context.batch is None  # the adapters' video is cleared
    assert torch.equal(music(), first)  # and the next generation is whole


def test_each_call_reads_its_own_text(tiny_base):
    musicgen = copy.deepcopy(tiny_base)
    for texts in (["piano", "drums"], ["a quiet lullaby for strings", None]):
        out = []
        for engine in ("reference", "fast"):
            musicgen_params = GenerationParams(use_sampling=False, engine=engine)
            torch.manual_seed(0)
            out.append(generate_tokens(musicgen, attributes(texts), 30, musicgen_params))
        assert torch.equal(*out)


def test_sampling_same_seed_same_music_and_the_reference_draws(tiny_base):
    vm = adapted(tiny_base)
    videos = random_video_batch(2, [True, False], num_frames=50)
    ref, fast = both_generations(vm, videos, 1.0)
    again = vm.generate(videos, texts=["piano", "drums"], duration=1.0, seed=4, return_tokens=True)[1]
    other = vm.generate(videos, texts=["piano", "drums"], duration=1.0, seed=5, return_tokens=True)[1]
    assert torch.equal(fast, again) and not torch.equal(fast, other)
    # The engine draws torch.multinomial's random numbers: on these logits, its tokens.
    assert torch.equal(ref, fast)


def test_zero_init_adapters_are_the_engines_plain_musicgen_bitwise(tiny_base):
    vm = adapted(tiny_base, scale=0, stage=2)
    videos = random_video_batch(2, [True, True], num_frames=60, num_global=3)
    guidance = Guidance.two_branch(3.0)
    with_video = run_both(vm.lm, guidance, 30, vm=vm, videos=videos)
    with vm.disable_adapters():
        plain = run_both(vm.lm, guidance, 30)
    assert torch.equal(with_video[1], plain[1])
    assert len(with_video[3]) == len(plain[3]) > 0
    assert all(torch.equal(a, b) for a, b in zip(with_video[3], plain[3]))


def test_the_engine_is_the_default_and_the_reference_stays_available(tiny_base):
    musicgen = copy.deepcopy(tiny_base)
    guidance = Guidance.two_branch(3.0, video=False)
    assert isinstance(select_engine(musicgen.lm, GenerationParams(), 2, guidance, 50), DecodeEngine)
    assert select_engine(musicgen.lm, GenerationParams(engine="reference"), 2, guidance, 50) is None
    hook = musicgen.lm.register_forward_pre_hook(lambda *a: None)
    assert select_engine(musicgen.lm, GenerationParams(), 2, guidance, 50) is None  # hooks see every forward
    hook.remove()
    generate_tokens(musicgen, attributes(["piano"]), 10, GenerationParams())
    lm = weakref.ref(musicgen.lm)
    del musicgen
    gc.collect()
    assert lm() is None  # its engines (caches, graphs) go with it


@pytest.mark.parametrize("change, words", [
    (lambda lm: setattr(lm.transformer, "positional_embedding", "rope"), "rope"),
    (lambda lm: lm.fuser.fuse2cond.update(cross=[]), "no condition by cross-attention"),
])
def test_an_unsupported_model_falls_back_with_one_line(tiny_base, change, words):
    musicgen = copy.deepcopy(tiny_base)
    change(musicgen.lm)
    with pytest.warns(UserWarning, match=rf"^the fast decode engine does not support this model .*{words}"):
        assert select_engine(musicgen.lm, GenerationParams(), 1, Guidance.two_branch(3.0, video=False), 50) is None


def test_cli_chooses_the_engine(tmp_path, monkeypatch, capsys):
    import vidmusician.pipeline as pipeline
    from vidmusician import cli
    from vidmusician.errors import ConfigError

    seen = []

    def fake_generate(video, **kwargs):
        seen.append(kwargs)
        raise ConfigError("stop here")

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    args = ["generate", str(tmp_path / "v.mp4"), "-o", str(tmp_path / "o.wav"), "-q"]
    for flags in ([], ["--engine", "reference"]):
        assert cli.main([*args, *flags]) == 2
    assert [kw["engine"] for kw in seen] == ["fast", "reference"]
    with pytest.raises(SystemExit):
        cli.main([*args, "--engine", "turbo"])
    assert "invalid choice: 'turbo'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="engine must be one of fast, reference, got 'turbo'"):
        GenerationParams(engine="turbo")


# --------------------------------------------------------------------------- #
# CUDA: the captured step (skipped without a GPU)

def cuda(test):
    return pytest.mark.cuda(NEEDS_CUDA(test))


@cuda
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "fp16-autocast"])
def test_cuda_engine_matches_the_reference_and_its_graph_the_eager_step(autocast):
    vm = adapted(tiny_musicgen(device="cuda"))
    videos = random_video_batch(2, [False, True], num_frames=60, num_global=3).to("cuda")
    guidance = Guidance.two_branch(3.0, plausibility=0.01)
    with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
        ref, eager, ref_logits, eng_logits = run_both(vm.lm, guidance, 40, vm=vm, videos=videos, graph=False)
        graphed = run_both(vm.lm, guidance, 40, vm=vm, videos=videos)[1]
    if autocast:  # half precision: the paths round apart; most greedy tokens still agree
        assert (ref == eager).float().mean() > 0.9 and (graphed == eager).float().mean() > 0.9
        assert_logits_close(ref_logits, eng_logits, tol=3e-2)
    else:
        assert_same(ref, eager, ref_logits, eng_logits, tol=1e-4)
        assert torch.equal(graphed, eager)


@cuda
def test_cuda_graph_is_captured_once_for_every_window_and_the_seed_gives_the_music():
    vm = adapted(tiny_musicgen(device="cuda"))
    vm.musicgen.max_duration = 1
    videos = random_video_batch(2, [True, False], num_frames=100)
    vm.set_generation_params(extend_stride=0.5)

    def music(seed):
        return vm.generate(videos, texts=["piano", None], duration=2.0, seed=seed, return_tokens=True)[1]

    first = music(1)
    engine = select_engine(vm.lm, vm.generation_params, 2, vm.generation_params.guidance(), 50, (vm._hook.id,))
    assert engine.graph.captures == 1  # three windows, one capture
    assert set(engine.graph.timings) == {"warmup_s", "capture_s"}
    assert torch.equal(first, music(1)) and not torch.equal(first, music(2))
    assert engine.graph.captures == 1  # and the next videos of that shape replay it


@cuda
def test_cuda_texts_of_other_lengths_replay_one_graph_and_match_the_reference():
    """The text's slots past its tokens are masked in the captured step as on the CPU: one capture
    serves texts of 1 to 32 T5 tokens, and each gives the reference path's greedy music."""
    lm = tiny_musicgen(t5=True, device="cuda").lm
    guidance = Guidance.two_branch(3.0, video=False)
    max_len = len(lm.pattern_provider.get_pattern(30).layout)
    engine = DecodeEngine(lm, 2, guidance.branches, max_len, torch.device("cuda"))
    for texts in [("piano", "drums"), ("a quiet lullaby for strings and a far choir", "drums"), ("drums", None)]:
        conditions = guidance_conditions(lm, attributes(texts), guidance)
        prompt = torch.zeros(2, lm.num_codebooks, 0, dtype=torch.long, device="cuda")
        ref = sample_window(lm, prompt, conditions, guidance, 30, GREEDY)
        assert torch.equal(ref, engine.sample_window(prompt, conditions, guidance, 30, GREEDY)), texts
    assert engine.graph.captures == 1
