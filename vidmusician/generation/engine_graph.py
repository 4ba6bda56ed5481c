"""The decode engine's step as one CUDA graph: captured once per batch shape, replayed at every step.

A captured graph reads and writes the very tensors it saw at capture: the engine's
sequence, position and key/value cache are allocated once, and each new window's
inputs (text keys and values, folded visual memory, local signal) are copied into the
tensors of the window the graph was captured with. Nothing in a step depends on the
host: the position lives in a device tensor, the cache is masked past it, and the
sampling draws from the CUDA generator with graph-safe offsets, so a replay is one
launch. A new graph is captured only when what the step computes changes: the guidance,
the sampling parameters, the text length, which adapters act, the autocast dtype.

Warm-up and capture times are kept in :attr:`StepGraph.timings` (seconds), apart from
the steps; the random-number state is put back after them, so the same seed gives the
same music whether or not this call captured.
"""

from __future__ import annotations

import time

import torch

__all__ = ["StepGraph", "window_tensors"]

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS handles, allocator)


def window_tensors(window) -> list[torch.Tensor]:
    """The tensors a step reads from a window, in a fixed order."""
    out = [t for pair in window.cross if pair is not None for t in pair]
    video = window.video
    if video is not None:
        out.append(video.present)
        for i in sorted(video.folded):
            out.extend(video.folded[i])
        if video.local is not None:
            out.append(video.local)
    return out


def _structure(window) -> tuple:
    video = window.video
    return (tuple((tuple(t.shape), t.dtype, t.stride()) for t in window_tensors(window)),
            tuple(sorted((i, id(layer)) for i, layer in window.adapted.items())),
            None if video is None else (video.rows, tuple(sorted(video.folded)), video.local is not None))


class StepGraph:
    """One CUDA graph of :meth:`DecodeEngine.step <vidmusician.generation.engine.DecodeEngine.step>`."""

    def __init__(self, engine):
        self.engine = engine
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key = None
        self.window = None  # the window the graph reads (its tensors are the graph's inputs)
        self.timings: dict[str, float] = {}
        self.captures = 0

    def load_window(self, window):
        """The window steps should read: ``window`` itself, or its values copied into the captured one's tensors."""
        if self.window is not None and _structure(self.window) == _structure(window):
            for static, fresh in zip(window_tensors(self.window), window_tensors(window)):
                static.copy_(fresh)
            return self.window
        self.graph, self.key, self.window = None, None, window  # another structure: capture again
        return window

    def step(self, guidance, params):
        """The replay of the step for these parameters (captured first if needed)."""
        key = (guidance, tuple(sorted(vars(params).items())), _autocast_state(), _structure(self.window))
        if self.graph is None or key != self.key:
            self._capture(guidance, params)
            self.key = key
        return self.graph.replay

    def _capture(self, guidance, params):
        engine = self.engine
        device = engine.device
        saved = engine.sequence.clone(), engine.position.clone()
        rng = torch.cuda.get_rng_state(device)
        enabled, dtype = _autocast_state()

        def run():
            # Cast caches of autocast must not outlive the capture: graph tensors are the graph's.
            with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
                engine.step(guidance, params)

        torch.cuda.synchronize(device)
        start = time.perf_counter()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        room = engine.max_len - 1 - int(engine.position)  # each warm-up step writes one position on
        with torch.cuda.stream(stream):
            for _ in range(min(WARMUP_STEPS, room)):
                run()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        warm = time.perf_counter()
        # The warm-up steps wrote tokens and moved the position: the capture starts from the window's state.
        engine.sequence.copy_(saved[0])
        engine.position.copy_(saved[1])
        self.graph = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        torch.cuda.synchronize(device)
        self.graph = graph
        torch.cuda.set_rng_state(rng, device)
        engine.sequence.copy_(saved[0])
        engine.position.copy_(saved[1])
        self.captures += 1
        self.timings = {"warmup_s": warm - start, "capture_s": time.perf_counter() - warm}


def _autocast_state() -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
