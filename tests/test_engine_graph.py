"""The engine's captured step, run on the CPU: what a CUDA graph replays, and the logic around it.

A CUDA graph freezes at capture every value the host computed for the step and replays
the same operations on the same tensors; a step that reads a device value on the host
cannot be captured at all. :func:`traced` does the same on the CPU: it traces the step
once with ``make_fx`` (the operations on the engine's own tensors, host values frozen; a
host read fails the trace) and replays the trace. With it, :class:`StepGraph` runs here
as it runs on a GPU: the graph-mode step (the whole cache, masked past the position),
windows copied into the captured window's tensors, the state put back around a capture,
eviction, and the waits for queued steps.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import random_video_batch
from test_engine import GREEDY, adapted, assert_logits_close, attributes, run_both
from vidmusician.generation import engine_graph
from vidmusician.generation.engine import DecodeEngine
from vidmusician.generation.engine_graph import SYNC_EVERY, StepGraph
from vidmusician.generation.guidance import GenerationParams, Guidance, guidance_conditions
from vidmusician.generation.windows import generate_tokens
from vidmusician.testing.random_backbones import build, codec_config, lm_config

# A capture that fails falls back to eager steps with a warning: here it fails the test.
pytestmark = pytest.mark.filterwarnings("error:the decode step could not be captured:UserWarning")

RECORDED = []  # the steps recorded since the fixture began


class NoHostReads(TorchDispatchMode):
    """Fails an operation that makes the host wait for a device value (a CUDA capture refuses it)."""

    aten = torch.ops.aten
    SYNCING = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
               aten.nonzero.default, aten.masked_select.default, aten.multinomial.default,
               aten.repeat_interleave.Tensor, aten._unique2.default, aten.unique_consecutive.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCING:
            raise RuntimeError(f"{func} reads a device value on the host: a CUDA graph cannot capture it")
        return func(*args, **(kwargs or {}))


def traced(run, device):
    """A CPU stand-in for :func:`~vidmusician.generation.engine_graph.cuda_graph`: ``run`` traced
    (it runs once meanwhile; StepGraph puts the state back), the trace replayed."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def guarded():
        with NoHostReads():
            run()

    RECORDED.append(run)
    return make_fx(guarded, tracing_mode="real")()


def untraced(run, device):
    """The graph-mode step run as it is, each time (nothing frozen): what the trace must equal."""
    RECORDED.append(run)
    return run


@pytest.fixture
def graphs(monkeypatch):
    """Engines made from now on capture their step with the recorder the test sets (traced by default)."""
    recorder = {"record": traced}
    monkeypatch.setattr(StepGraph, "for_engine", classmethod(lambda cls, engine: cls(engine, **recorder)))
    RECORDED.clear()
    yield recorder
    RECORDED.clear()


@pytest.fixture(scope="module")
def tiny_base():
    from vidmusician.testing.random_backbones import tiny_musicgen

    return tiny_musicgen()


def engine_run(lm, guidance, frames, params, texts, vm=None, videos=None, seed=0, **kwargs):
    """The engine's codes of one window (a new engine: its graphs are the fixture's)."""
    return run_both(lm, guidance, frames, params=params, texts=texts, vm=vm, videos=videos, seed=seed, **kwargs)


# --------------------------------------------------------------------------- #
# The captured step computes the model


@pytest.mark.numerics
@pytest.mark.parametrize("case", ["plain", "no text", "adapted two", "adapted three t5-lora", "stereo"])
def test_the_captured_step_gives_the_reference_greedy_tokens(graphs, tiny_base, case):
    from vidmusician.testing.random_backbones import tiny_musicgen

    texts, vm, videos = ("piano", "drums"), None, None
    guidance = Guidance.two_branch(3.0, video=False)
    if case == "plain":
        lm = copy.deepcopy(tiny_base).lm
    elif case == "no text":
        lm, texts = copy.deepcopy(tiny_base).lm, (None, None)
    elif case == "stereo":
        cfg = lm_config(32, 4, 4, n_q=8, card=400)
        cfg.codebooks_pattern.delay.delays = [q // 2 for q in range(8)]
        lm = build(cfg, codec_config(50, 400, n_q=8), "tiny-stereo", seed=0).lm
    else:
        three = case.startswith("adapted three")
        base = tiny_musicgen(t5=True) if three else tiny_base
        vm = adapted(base, semantic_encoder="t5-lora" if three else "linear")
        lm = vm.lm
        videos = random_video_batch(2, [False, True], num_frames=60, num_global=3)  # a null video beside one
        guidance = Guidance.three_branch(2.0, 5.0, plausibility=0.01) if three else Guidance.two_branch(3.0)
    ref, codes, _, _ = engine_run(lm, guidance, 40, GREEDY, texts, vm=vm, videos=videos)
    assert len(RECORDED) == 1  # one capture for the window's steps
    assert torch.equal(ref, codes)


@pytest.mark.numerics
def test_the_graph_mode_step_logits_are_the_references(graphs, tiny_base):
    """The step a graph replays attends over the whole cache, masked past the position: its logits."""
    graphs["record"] = untraced  # the step itself runs at every replay, so its logits are seen
    vm = adapted(tiny_base)
    videos = random_video_batch(2, [True, False], num_frames=60, num_global=3)
    ref, codes, ref_logits, eng_logits = engine_run(vm.lm, Guidance.two_branch(3.0, plausibility=0.01), 40,
                                                    GREEDY, ("piano", "drums"), vm=vm, videos=videos)
    # The warm-up steps and the capture run the step too: the window's own steps are the last ones.
    assert_logits_close(ref_logits, eng_logits[-len(ref_logits):])
    assert torch.equal(ref, codes)


@pytest.mark.parametrize("params", [GenerationParams(), GenerationParams(top_p=0.9, temperature=0.8)],
                         ids=["top-k", "top-p"])
def test_the_replayed_trace_samples_the_steps_draws(graphs, tiny_base, params):
    """Frozen host values, the random stream and the state put back around the capture: the trace's
    replays sample exactly what the graph-mode step samples when it runs as it is."""
    vm = adapted(tiny_base)
    videos = random_video_batch(2, [True, False], num_frames=60, num_global=3)
    guidance = Guidance.three_branch(2.0, 4.0, plausibility=0.01)
    out = {}
    for record in (traced, untraced, traced):
        graphs["record"] = record
        out.setdefault(record, []).append(engine_run(vm.lm, guidance, 40, params, ("piano", None), vm=vm,
                                                     videos=videos, seed=7)[1])
    graphs["record"] = traced
    other = engine_run(vm.lm, guidance, 40, params, ("piano", None), vm=vm, videos=videos, seed=8)[1]
    first = out[traced][0]
    assert torch.equal(first, out[untraced][0]) and torch.equal(first, out[traced][1])
    assert not torch.equal(first, other)


# --------------------------------------------------------------------------- #
# Whole generations: windows, videos, seeds


def long_generation(vm, videos, params, seed=4, texts=("piano", "drums"), on_step=None):
    vm.set_generation_params(extend_stride=0.5, **params)
    return vm.generate(videos, texts=list(texts), duration=1.9, seed=seed, return_tokens=True, on_step=on_step)[1]


def long_batch(tiny_base):
    vm = adapted(tiny_base)
    vm.musicgen.max_duration = 1
    videos = random_video_batch(2, [True, True], num_frames=100, num_global=2)  # two seconds...
    videos.local[1, 25:] = 0
    videos.global_mask[1, 1:] = False  # ... and half a second beside it
    return vm, videos


def test_one_capture_serves_every_window_and_video_of_a_batch_shape(graphs, tiny_base, monkeypatch):
    vm, videos = long_batch(tiny_base)
    greedy = dict(use_sampling=False, text_cfg_coef=2.0, video_cfg_coef=4.0)
    ref = long_generation(vm, videos, dict(greedy, engine="reference"))
    waits, calls, starts = [], [], []
    monkeypatch.setattr(StepGraph, "synchronize", lambda self: waits.append(len(calls)))
    sample_window = DecodeEngine.sample_window
    monkeypatch.setattr(DecodeEngine, "sample_window", lambda self, *a, **k: starts.append(len(calls))
                        or sample_window(self, *a, **k))
    fast = long_generation(vm, videos, dict(greedy, engine="fast"), on_step=lambda done, total: calls.append(done))
    assert len(RECORDED) == 1  # three windows (the first unprompted), one capture
    assert torch.equal(ref, fast)
    # The host waits for the queued replays every SYNC_EVERY steps of a window, before reporting them.
    assert len(starts) == 3 and calls == list(range(1, len(calls) + 1))
    steps = [b - a for a, b in zip(starts, starts[1:] + [len(calls)])]
    assert len(waits) == sum(n // SYNC_EVERY for n in steps) > 3
    window = {w: max(i for i, s in enumerate(starts) if s <= w) for w in waits}
    assert all((w - starts[window[w]] + 1) % SYNC_EVERY == 0 for w in waits)
    # Each window's text and video went into the captured window's tensors: the next videos replay too.
    other = random_video_batch(2, [True, False], num_frames=100, num_global=2, seed=5)
    assert torch.equal(long_generation(vm, other, dict(greedy, engine="fast")),
                       long_generation(vm, other, dict(greedy, engine="reference")))
    assert len(RECORDED) == 1


def test_per_video_seeds_sample_eagerly_and_greedy_replays_the_graph(graphs, tiny_base):
    """Swapping a generator per row is no part of a graph: sampled steps with per-video seeds run
    eagerly (the reference's draws); greedy steps draw nothing and replay the graph."""
    vm, videos = long_batch(tiny_base)
    seeds = [11, 12]
    sampled = long_generation(vm, videos, dict(engine="fast"), seed=seeds)
    assert RECORDED == []
    assert torch.equal(sampled, long_generation(vm, videos, dict(engine="reference"), seed=seeds))
    greedy = long_generation(vm, videos, dict(engine="fast", use_sampling=False), seed=seeds)
    assert len(RECORDED) == 1
    assert torch.equal(greedy, long_generation(vm, videos, dict(engine="reference", use_sampling=False), seed=seeds))


# --------------------------------------------------------------------------- #
# Kinds of step: one graph each, the oldest evicted


def test_the_oldest_graph_goes_and_the_windows_no_graph_reads(graphs, monkeypatch):
    from vidmusician.testing.random_backbones import tiny_musicgen

    graphs["record"] = untraced  # the logic, not the trace: cheaper
    monkeypatch.setattr(engine_graph, "MAX_GRAPHS", 2)
    musicgen = tiny_musicgen(t5=True)  # T5's tokens: a text's length is its own (the lookup table's is 1)

    def tokens(texts, cfg, engine="fast"):
        torch.manual_seed(0)
        params = GenerationParams(use_sampling=False, cfg_coef=cfg, engine=engine, plausibility=0.0)
        return generate_tokens(musicgen, attributes(texts), 20, params)

    def graph():
        from vidmusician.generation.engine_select import _ENGINES

        return _ENGINES[musicgen.lm].graph

    # A text of up to 32 tokens takes 32 slots; the long one (55 T5 tokens) takes 64: another window shape.
    long_text = " ".join(["a quiet lullaby for strings"] * 6)
    short, long_, other_short = ["piano", "drums"], [long_text, "drums"], ["drums", "piano"]
    for texts, cfg in [(short, 3.0), (long_, 3.0), (short, 2.0), (other_short, 2.0), (long_, 2.0)]:
        assert torch.equal(tokens(texts, cfg), tokens(texts, cfg, "reference")), (texts, cfg)
        g = graph()
        assert len(g.graphs) <= 2
        assert set(g.windows) <= {key[0] for key in g.graphs}  # a window no graph reads is dropped
    # (short, 2.0) evicted (short, 3.0), whose window the new graph reads: it was kept, and
    # other_short's values went into it; the last call evicted (long, 3.0) and kept its window.
    assert len(RECORDED) == 4 and len(g.windows) == 2


@pytest.mark.numerics
def test_texts_of_other_lengths_share_a_capture_and_read_only_their_own_tokens(graphs):
    """Texts of 1 to 32 tokens take one shape (the slots past a text masked out): one capture
    serves them all, and each window's music is the reference path's for its own text."""
    from vidmusician.testing.random_backbones import tiny_musicgen

    musicgen = tiny_musicgen(t5=True)  # T5's tokens: padded to the batch's longest text, as the real model's
    guidance = Guidance.two_branch(3.0, video=False)
    texts = [("piano", "drums"), ("a quiet lullaby for strings", "drums"), ("drums", None)]
    engine = None
    for t in texts:
        ref, codes, ref_logits, eng_logits = run_both(musicgen.lm, guidance, 30, texts=t, graph=False)
        assert_logits_close(ref_logits, eng_logits)
        assert torch.equal(ref, codes), t
    # The same three windows through one engine's captured step: one capture.
    lm = musicgen.lm
    for t in texts:
        conditions = guidance_conditions(lm, attributes(t), guidance)
        ref = sample_window_reference(lm, conditions, guidance, 30)
        if engine is None:
            max_len = len(lm.pattern_provider.get_pattern(30).layout)
            engine = DecodeEngine(lm, len(t), guidance.branches, max_len, torch.device("cpu"))
        prompt = torch.zeros(len(t), lm.num_codebooks, 0, dtype=torch.long)
        assert torch.equal(ref, engine.sample_window(prompt, conditions, guidance, 30, GREEDY)), t
    assert len(RECORDED) == 1 and engine.graph.captures == 1


def sample_window_reference(lm, conditions, guidance, frames):
    from vidmusician.generation.guidance import sample_window

    prompt = torch.zeros(conditions["description"][0].shape[0] // guidance.branches, lm.num_codebooks, 0,
                         dtype=torch.long)
    return sample_window(lm, prompt, conditions, guidance, frames, GREEDY)


# --------------------------------------------------------------------------- #
# What a capture refuses


def test_a_step_that_reads_a_device_value_on_the_host_cannot_be_captured(graphs, tiny_base, monkeypatch):
    """The trace fails as a CUDA capture does (a sync inside a graph): the guard the tests above rely on
    (the engine's fallback to eager steps warns, and the warning is an error in this file)."""
    step = DecodeEngine.step

    def host_read(self, guidance, params, length=None, row_seeds=None):
        if int(self.position) < 0:  # a read of the device position on the host
            raise AssertionError
        return step(self, guidance, params, length, row_seeds)

    monkeypatch.setattr(DecodeEngine, "step", host_read)
    with pytest.raises(UserWarning, match=r"^the decode step could not be captured as a CUDA graph "
                                          r"\(.*_local_scalar_dense.* reads a device value on the host"):
        engine_run(copy.deepcopy(tiny_base).lm, Guidance.two_branch(3.0, video=False), 20, GREEDY, ("piano",))


def test_a_step_the_device_cannot_capture_runs_eagerly_with_one_line(graphs, tiny_base):
    def refused(run, device):
        RECORDED.append(run)
        raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors might be ...")

    graphs["record"] = refused
    vm, videos = long_batch(tiny_base)
    greedy = dict(use_sampling=False, text_cfg_coef=2.0, video_cfg_coef=4.0)
    with pytest.warns(UserWarning) as caught:
        fast = long_generation(vm, videos, dict(greedy, engine="fast"))
    lines = [str(w.message) for w in caught if "CUDA graph" in str(w.message)]
    assert lines == ["the decode step could not be captured as a CUDA graph (operation not permitted when "
                     "stream is capturing); it runs eagerly, slower"]  # once: the next windows do not try again
    assert len(RECORDED) == 1
    assert torch.equal(fast, long_generation(vm, videos, dict(greedy, engine="reference")))


def test_a_window_under_another_autocast_state_gets_its_cache_and_graph(graphs, tiny_base):
    """The cache is in the dtype the attention computes in; a window under autocast (bf16 on the
    CPU, fp16 on a GPU) after one without allocates it again, and the graphs of the old one go."""
    musicgen = copy.deepcopy(tiny_base)
    params = GenerationParams(use_sampling=False)

    def tokens(autocast, engine="fast", model=musicgen):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return generate_tokens(model, attributes(["piano", "drums"]), 20, replace(params, engine=engine))

    plain = tokens(False)
    assert torch.equal(plain, tokens(False, "reference"))
    half = tokens(True)
    assert len(RECORDED) == 2  # fp32, then bf16
    from vidmusician.generation.engine_select import _ENGINES

    assert _ENGINES[musicgen.lm].cache[0][0].dtype == torch.bfloat16
    assert torch.equal(half, tokens(True, model=copy.deepcopy(tiny_base)))  # what a new engine computes
    assert torch.equal(tokens(False), plain) and len(RECORDED) == 4  # and back
