"""The decode engine's step as one CUDA graph: captured once per batch shape, replayed at every step.

A captured graph reads and writes the very tensors it saw at capture: the engine's
sequence, position and key/value cache are allocated once, and each new window's
inputs (text keys and values, folded visual memory, local signal) are copied into the
tensors of the window the graph was captured with. Nothing in a step depends on the
host: the position lives in a device tensor, the cache is masked past it, and the
sampling draws from the CUDA generator with graph-safe offsets, so a replay is one
launch. A graph is captured for each kind of step: the guidance, the sampling
parameters, the text length, which adapters act, the autocast dtype.

Warm-up and capture times are kept in :attr:`StepGraph.timings` (seconds), apart from
the steps; the random-number state is put back after them, so the same seed gives the
same music whether or not this call captured.
"""

from __future__ import annotations

import time

import torch

__all__ = ["StepGraph", "window_tensors"]

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS handles, allocator)
MAX_GRAPHS = 8  # kinds of step kept captured per engine


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
    """The CUDA graphs of :meth:`DecodeEngine.step <vidmusician.generation.engine.DecodeEngine.step>`.

    One graph per kind of step (the window's structure, the guidance, the sampling
    parameters, autocast's state), kept while the engine lives: a generation that
    alternates between two kinds (the base model and the adapted one) captures each once.
    """

    def __init__(self, engine):
        self.engine = engine
        self.windows: dict = {}  # structure -> the window whose tensors the graphs of that structure read
        self.graphs: dict = {}  # (structure, guidance, params, autocast) -> CUDAGraph
        self.timings: dict[str, float] = {}  # of the last capture
        self.captures = 0

    def load_window(self, window):
        """The window steps should read: ``window`` itself, or its values copied into the captured one's tensors."""
        structure = _structure(window)
        static = self.windows.get(structure)
        if static is None:
            self.windows[structure] = window
            return window
        for mine, fresh in zip(window_tensors(static), window_tensors(window)):
            mine.copy_(fresh)
        return static

    def step(self, guidance, params):
        """The replay of the step for these parameters (captured first if needed)."""
        key = (_structure(self.engine.window), guidance, tuple(sorted(vars(params).items())), _autocast_state())
        graph = self.graphs.get(key)
        if graph is None:
            if len(self.graphs) >= MAX_GRAPHS:  # the oldest goes, with its memory pool
                self.graphs.pop(next(iter(self.graphs)))
            graph = self.graphs[key] = self._capture(guidance, params)
        return graph.replay

    def _capture(self, guidance, params) -> torch.cuda.CUDAGraph:
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
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        torch.cuda.synchronize(device)
        # Nothing ran during the capture, but the warm-up drew random numbers and the capture
        # reserved some: the stream goes on from where this window found it.
        torch.cuda.set_rng_state(rng, device)
        engine.sequence.copy_(saved[0])
        engine.position.copy_(saved[1])
        self.captures += 1
        self.timings = {"warmup_s": warm - start, "capture_s": time.perf_counter() - warm}
        return graph


def _autocast_state() -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
