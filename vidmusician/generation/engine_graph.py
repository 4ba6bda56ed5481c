"""The decode engine's step as one CUDA graph: captured once per batch shape, replayed at every step.

A captured graph reads and writes the very tensors it saw at capture: the engine's
sequence, position and key/value cache are allocated once, and each new window's
inputs (text keys and values, folded visual memory, local signal) are copied into the
tensors of the window the graph was captured with. Nothing in a step depends on the
host: the position lives in a device tensor, the cache is masked past it, and the
sampling draws from the CUDA generator with graph-safe offsets, so a replay is one
launch. A graph is captured for each kind of step: the guidance, the sampling
parameters, the text's slots (texts of up to 32 tokens share one), which adapters act,
the autocast dtype.

Warm-up and capture times are kept in :attr:`StepGraph.timings` (seconds), apart from
the steps; the random-number state is put back after them, so the same seed gives the
same music whether or not this call captured.

How a step is recorded is :class:`StepGraph`'s ``record`` argument (a CUDA graph by
default); the logic around it (which graph, which window's tensors, the state put back
around a capture) runs on any device, so the tests run it on the CPU with a recorder
that freezes the step's host values as a capture does.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch

__all__ = ["StepGraph", "cuda_graph", "window_tensors"]

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS handles, allocator)
MAX_GRAPHS = 8  # kinds of step kept captured per engine
# The host queues replays ahead of the device; it waits for them every this many steps when
# someone watches the steps (a progress bar, on_step, a Cancel button), so that a step
# reported done has run and a stop lands within this many steps.
SYNC_EVERY = 8


def cuda_graph(run: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``run`` captured as one CUDA graph on ``device``: its replay (nothing runs at capture)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def window_tensors(window) -> list[torch.Tensor]:
    """The tensors a step reads from a window, in a fixed order."""
    out = [t for pair in window.cross if pair is not None for t in pair]
    out.append(window.text)
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
    """The captured graphs of :meth:`DecodeEngine.step <vidmusician.generation.engine.DecodeEngine.step>`.

    One graph per kind of step (the window's structure, the guidance, the sampling
    parameters, autocast's state), kept while the engine lives: a generation that
    alternates between two kinds (the base model and the adapted one) captures each once.

    Args:
        engine: the :class:`~vidmusician.generation.engine.DecodeEngine` whose step is captured.
        record: ``record(run, device)`` captures ``run`` (one step) and returns its replay;
            :func:`cuda_graph` by default.
    """

    def __init__(self, engine, record: Callable = cuda_graph):
        self.engine = engine
        self.record = record
        self.windows: dict = {}  # structure -> the window whose tensors the graphs of that structure read
        self.graphs: dict = {}  # (structure, guidance, params, autocast) -> replay
        self.timings: dict[str, float] = {}  # of the last capture
        self.captures = 0

    @classmethod
    def for_engine(cls, engine) -> "StepGraph | None":
        """The graphs of ``engine``'s step where its device has them (CUDA), else None (eager steps)."""
        return cls(engine) if engine.device.type == "cuda" else None

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

    def step(self, guidance, params) -> Callable[[], None]:
        """The replay of the step for these parameters (captured first if needed)."""
        device = self.engine.device
        structure = _structure(self.engine.window)
        key = (structure, guidance, tuple(sorted(vars(params).items())), _autocast_state(device))
        replay = self.graphs.get(key)
        if replay is None:
            if len(self.graphs) >= MAX_GRAPHS:  # the oldest goes, with its memory pool ...
                self.graphs.pop(next(iter(self.graphs)))
                # ... and the windows no graph reads any more (but this one's, which the new graph reads).
                kept = {k[0] for k in self.graphs} | {structure}
                self.windows = {s: w for s, w in self.windows.items() if s in kept}
            replay = self.graphs[key] = self._capture(guidance, params)
        return replay

    def reset(self) -> None:
        """Drops every graph and window (the engine's cache was allocated again: they read the old one)."""
        self.graphs.clear()
        self.windows.clear()

    def synchronize(self) -> None:
        """Waits until the steps queued so far have run."""
        _synchronize(self.engine.device)

    def _capture(self, guidance, params) -> Callable[[], None]:
        engine = self.engine
        device = engine.device
        saved = engine.sequence.clone(), engine.position.clone()
        rng = _rng_state(device)
        enabled, dtype = _autocast_state(device)

        def run():
            # Cast caches of autocast must not outlive the capture: graph tensors are the graph's.
            with torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False):
                engine.step(guidance, params)

        def restore():
            engine.sequence.copy_(saved[0])
            engine.position.copy_(saved[1])

        _synchronize(device)
        start = time.perf_counter()
        room = engine.max_len - 1 - int(engine.position)  # each warm-up step writes one position on
        with _side_stream(device):
            for _ in range(min(WARMUP_STEPS, room)):
                run()
        _synchronize(device)
        warm = time.perf_counter()
        try:
            restore()  # the warm-up steps wrote tokens and moved the position: the capture starts from the window's state
            replay = self.record(run, device)
            _synchronize(device)
        finally:
            # A recorder that runs the step as it records it moved the state on as well; and the
            # warm-up drew random numbers (a CUDA capture reserves some): the stream goes on from
            # where this window found it.
            restore()
            _set_rng_state(rng, device)
        self.captures += 1
        self.timings = {"warmup_s": warm - start, "capture_s": time.perf_counter() - warm}
        return replay


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _side_stream(device: torch.device):
    """A CUDA side stream that waits for the current one, and that it waits for at exit (warm-up runs there)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))

    @contextlib.contextmanager
    def side():
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream(device).wait_stream(stream)
    return side()


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
