"""Generation overhead of the video adapters: adapted over base MusicGen wall time.

Builds the small architecture (1024 wide, 24 layers, random weights, a random
t5-base-shaped text encoder) with the musicgen-small preset's adapters, once per
semantic encoder ('linear' and the preset's 't5-lora', side by side: the T5 pass
runs once per window, in the first step), and times the base model against the
adapted one:

- Generation of the same audio length, CFG on. Two copies of the model generate
  step-locked: each in its own thread, taking turns at every LM step, so both see
  the same machine state step by step (a slow spell of a shared machine weighs on
  both), and each is timed over its own turns only (its steps and sampling, its
  conditioning and decoding at the ends). One copy runs with its adapters disabled
  (``VidMusician.disable_adapters``: the base layers themselves), and the copies swap
  roles every round, so that a difference in speed between the two copies' places
  in memory cancels out. The ratio is the geometric mean of the rounds' ratios.
- The LM steps of generations of one model with its adapters on at every other
  step: the same weights and the same moment of the machine on both sides, each
  step timed with its sampling.
- Single streaming LM steps (the unit of generation, CFG batch of 2) of one model,
  with and without its adapters in back-to-back pairs: the very same weights on
  both sides, and each pair's own ratio.
- The same steps with every base layer skipped, which leaves the adapters' own work.

Prints the ratios and the trainable parameter counts of every preset.

    .venv/bin/python benchmarks/overhead.py [--size small] [--seconds 4] [--rounds 4] [--steps 40]
        [--attn-heads N] [--semantic-encoders linear,t5-lora] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import statistics
import threading
import time

import torch
from torch import nn

from vidmusician import attach_adapters
from vidmusician.random_backbones import random_musicgen
from vidmusician.config import AdapterConfig, load_preset, preset_names
from vidmusician.adapter.context import VideoBatch
from vidmusician.adapter.wiring import AdaptedLayer, count_adapter_parameters


def video_batch(config: AdapterConfig, seconds: float) -> VideoBatch:
    """Random features for a video of at least one full window, so that the
    cross-attention attends to as many global tokens as in real use."""
    seconds = max(seconds, config.max_global_tokens / config.global_fps)
    frames = int(seconds * config.frame_rate) + 1
    tokens = int(seconds * config.global_fps) + 1
    return VideoBatch(torch.randn(1, tokens, config.global_dim), torch.ones(1, tokens, dtype=torch.bool),
                      torch.rand(1, frames, config.local_dim), torch.ones(1, dtype=torch.bool),
                      config.global_fps, config.frame_rate)


# Generation settings of every timed generation: sampling as MusicGen's defaults, CFG on.
GENERATION = dict(use_sampling=True, top_k=250, cfg_coef=3.0)


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class TakeTurns:
    """Runs generations in threads that take turns, one LM step each, and times each one's turns.

    A turn starts when a thread is handed the turn and ends when its model starts its
    next LM step (a forward pre-hook hands the turn on), so a thread's time is its
    own steps, sampling and loop; the first turn holds its conditioning, the last its
    decoding. Only one thread runs at a time.
    """

    def __init__(self, names: list[str], device: torch.device):
        self.names = names
        self.device = device
        self.cond = threading.Condition()
        self.turn = names[0]
        self.done: set[str] = set()
        self.seconds = dict.fromkeys(names, 0.0)
        self.since = 0.0

    def _pass(self, name: str, finished: bool = False):
        with self.cond:
            self.seconds[name] += clock(self.device) - self.since
            if finished:
                self.done.add(name)
            waiting = [n for n in self.names if n not in self.done]
            if waiting:
                i = self.names.index(name)
                # The next unfinished thread after this one, this one itself if it is alone.
                self.turn = next(n for n in self.names[i + 1:] + self.names[:i + 1] if n in waiting)
                self.cond.notify_all()
            if not finished:
                self.cond.wait_for(lambda: self.turn == name)
                self.since = clock(self.device)

    def run(self, jobs: dict[str, tuple[nn.Module, callable]]):
        """``jobs``: name -> (the LM whose steps mark turns, a function that generates)."""
        errors = []

        def worker(name, lm, fn):
            hook = lm.register_forward_pre_hook(lambda *_: self._pass(name))
            try:
                with self.cond:
                    self.cond.wait_for(lambda: self.turn == name)
                    self.since = clock(self.device)
                fn()
            except BaseException as e:  # reported by the main thread
                errors.append(e)
            finally:
                hook.remove()
                self._pass(name, finished=True)

        threads = [threading.Thread(target=worker, args=(name, *jobs[name])) for name in self.names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return self.seconds


def generate_in_turns(models: dict, seconds: float, first: str, device) -> dict[str, float]:
    """Generates ``seconds`` of audio with every model, step-locked; returns each one's seconds.

    ``models``: name -> (a MusicGen, a context to generate in).
    """
    names = [first] + [n for n in models if n != first]
    with contextlib.ExitStack() as stack:
        for musicgen, context in models.values():
            musicgen.set_generation_params(duration=seconds, **GENERATION)
            stack.enter_context(context)
        # The threads share the global random generator; the sampled tokens do not matter here.
        torch.manual_seed(0)
        turns = TakeTurns(names, device)
        return turns.run({name: (m.lm, lambda m=m: m.generate([None], return_tokens=True))
                          for name, (m, _) in models.items()})


def generate_toggled(vm, seconds: float, device) -> dict[str, list[float]]:
    """One generation of one model, its adapters on at every other LM step.

    Each step is timed from the start of its LM forward to the start of the next (the
    step, its sampling, the loop) and filed under the side it ran on: the very same
    weights and the same moment of the machine on both sides. The first two steps
    fill caches and are left out. Returns ``{"base": [...], "adapted": [...]}``.
    """
    times = {"base": [], "adapted": []}
    state = {"step": 0, "since": 0.0}
    disabled = contextlib.ExitStack()

    def toggle(*_):
        now = clock(device)
        step = state["step"]  # the step that just ended: odd steps ran adapted
        if step > 2:
            times["adapted" if step % 2 else "base"].append(now - state["since"])
        state["step"] = step + 1
        if (step + 1) % 2:  # the first step runs adapted, so streaming starts with the adapters
            disabled.close()
        else:
            disabled.enter_context(vm.disable_adapters())
        state["since"] = clock(device)

    vm.musicgen.set_generation_params(duration=seconds, **GENERATION)
    hook = vm.lm.register_forward_pre_hook(toggle)
    try:
        vm.musicgen.generate([None], return_tokens=True)
    finally:
        hook.remove()
        disabled.close()
    return times


def timed_steps(vm, steps: int, device) -> tuple[float, float, list[float]]:
    """One streaming LM step (batch 2: CFG's [cond; uncond]) of one model, with its adapters
    and without (disabled), back to back.

    Returns the median seconds of each and the pairs' own adapted/base ratios; the
    order within a pair alternates, so neither side always runs first. Both sides
    step the same streaming state, as generation does.
    """
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = vm.lm
    conds = [ConditioningAttributes(text={"description": None})] * 2
    provider = lm.condition_provider
    tensors = provider(provider.tokenize(conds))
    tokens = torch.randint(0, lm.card, (2, lm.num_codebooks, 1), device=device)
    times = {"base": [], "adapted": []}
    sides = (("base", vm.disable_adapters), ("adapted", contextlib.nullcontext))
    with torch.no_grad(), lm.streaming():
        for i in range(steps + 2):
            for name, side in (sides if i % 2 == 0 else sides[::-1]):
                with side():
                    start = clock(device)
                    lm(tokens, [], condition_tensors=tensors)
                    if i >= 2:  # the first steps fill caches
                        times[name].append(clock(device) - start)
    ratios = [a / b for a, b in zip(times["adapted"], times["base"])]
    return statistics.median(times["base"]), statistics.median(times["adapted"]), ratios


class _Skip(nn.Module):
    """Stands in for a transformer layer's own work: returns its input."""

    def forward(self, x, *args, **kwargs):
        return x


@contextlib.contextmanager
def base_layers_skipped(lm):
    """Every base transformer layer returns its input; the adapters around them still run.

    The step then costs only the embeddings, the output heads and the adapters, so the
    difference between steps with and without the adapters is the adapters' own work.
    """
    layers = lm.transformer.layers
    saved = [(layer, getattr(layer, "base_layer", None)) for layer in layers]
    try:
        for i, (layer, _) in enumerate(saved):
            if isinstance(layer, AdaptedLayer):
                layer.base_layer = _Skip()
            else:
                layers[i] = _Skip()
        yield
    finally:
        for i, (layer, base_layer) in enumerate(saved):
            if isinstance(layer, AdaptedLayer):
                layer.base_layer = base_layer
            layers[i] = layer


def adapted_copies(config: AdapterConfig, size: str, seconds: float, device) -> list:
    """Two VidMusicians with the same weights (random backbone and adapters), the video set."""
    video = video_batch(config, seconds)
    copies = []
    for _ in range(2):
        torch.manual_seed(0)  # the same weights in both copies
        vm = attach_adapters(random_musicgen(size, device=device), config)
        vm.set_video(video)
        copies.append(vm)
    return copies


def generation_rounds(copies: list, seconds: float, rounds: int, device) -> tuple[dict, list[float]]:
    """Step-locked generations of the two copies, one adapted and one not, swapping roles.

    Returns each side's seconds per round and the rounds' adapted/base ratios.
    """
    def roles(i):
        """Round i: copy i % 2 runs with its adapters, the other one without."""
        adapted, base = copies[i % 2], copies[1 - i % 2]
        return {"base": (base.musicgen, base.disable_adapters()),
                "adapted": (adapted.musicgen, contextlib.nullcontext())}

    # Warm-up at full length: a short one left the first timed round off by 1-3% in
    # runs that compared a model with itself.
    generate_in_turns(roles(0), seconds, "base", device)
    times = {"base": [], "adapted": []}
    for i in range(rounds):
        took = generate_in_turns(roles(i), seconds, ("base", "adapted")[i // 2 % 2], device)
        for side in times:
            times[side].append(took[side])
    return times, [x / y for x, y in zip(times["adapted"], times["base"])]


def report_generation(times: dict, rounds: list[float], seconds: float) -> None:
    b, a = statistics.median(times["base"]), statistics.median(times["adapted"])
    print(f"  base     median {b:7.2f} s   best {min(times['base']):7.2f} s   ({seconds / b:.2f} x real time)")
    print(f"  adapted  median {a:7.2f} s   best {min(times['adapted']):7.2f} s   ({seconds / a:.2f} x real time)")
    print(f"  ratio adapted / base: {statistics.geometric_mean(rounds):.3f} (geometric mean of the rounds' "
          f"ratios: {', '.join(f'{r:.3f}' for r in rounds)}; copy 0 adapted in rounds 1, 3, ...)")


def spread(ratios: list[float]) -> str:
    """The middle half of a list of ratios, as text."""
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"middle half {q1:.3f}-{q3:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of audio per generation")
    parser.add_argument("--rounds", type=int, default=4, help="timed step-locked generations of both")
    parser.add_argument("--steps", type=int, default=40, help="timed streaming LM steps per model")
    parser.add_argument("--attn-heads", type=int, default=None,
                        help="cross-attention heads instead of the preset's (the parameter count stays)")
    parser.add_argument("--semantic-encoders", default="linear,t5-lora",
                        help="comma-separated semantic encoders to time generation with, side by side; the "
                             "per-step views run with the last one")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    print("trainable adapter parameters per preset")
    for name in preset_names():
        c = count_adapter_parameters(load_preset(name))
        print(f"  {name:<16} semantic {c['semantic'] / 1e6:6.2f}M  rhythm {c['rhythm'] / 1e6:6.2f}M  "
              f"total {c['total'] / 1e6:6.2f}M")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    results = {}
    for encoder in args.semantic_encoders.split(","):
        config = dataclasses.replace(load_preset(f"musicgen-{args.size}"), semantic_encoder=encoder)
        if args.attn_heads is not None:
            config = dataclasses.replace(config, attn_heads=args.attn_heads)
        copies = None  # the previous encoder's copies go before this one's are built (hooks make cycles)
        gc.collect()
        copies = adapted_copies(config, args.size, args.seconds, device)
        results[encoder] = generation_rounds(copies, args.seconds, args.rounds, device)
        print(f"\n{args.size} architecture, semantic encoder {encoder}, {config.attn_heads}-head cross-attention, "
              f"{args.seconds:g} s of audio, CFG on, batch 1, {name}, "
              f"{args.rounds} rounds, base and adapted step-locked, the two copies swapping roles")
        report_generation(*results[encoder], args.seconds)
    if len(results) > 1:
        print("\ngeneration ratio adapted / base, side by side: " + ", ".join(
            f"{encoder} {statistics.geometric_mean(rounds):.3f}" for encoder, (_, rounds) in results.items()))
    vm = copies[0]
    toggled = {"base": [], "adapted": []}
    for _ in range(2):
        for name, steps in generate_toggled(vm, args.seconds, device).items():
            toggled[name] += steps
    print(f"\nthe LM steps of 2 generations of one model, its adapters on at every other step "
          f"({len(toggled['adapted'])} steps each; a step: forward, sampling, loop)")
    print(f"  base     median {statistics.median(toggled['base']) * 1e3:7.1f} ms")
    print(f"  adapted  median {statistics.median(toggled['adapted']) * 1e3:7.1f} ms")
    print(f"  ratio adapted / base: {sum(toggled['adapted']) / sum(toggled['base']):.3f} (ratio of the sums)")
    sb, sa, pairs = timed_steps(vm, args.steps, device)
    print(f"\none streaming LM step (CFG batch 2) of one model, with and without adapters, "
          f"{args.steps} interleaved pairs")
    print(f"  base     median {sb * 1e3:7.1f} ms")
    print(f"  adapted  median {sa * 1e3:7.1f} ms")
    print(f"  ratio adapted / base: {statistics.median(pairs):.3f} (median of the pairs' ratios; {spread(pairs)})")
    with base_layers_skipped(vm.lm):
        kb, ka, _ = timed_steps(vm, args.steps, device)
    work = ka - kb
    print(f"\nthe adapters' own work in a step (every base layer skipped, {args.steps} interleaved pairs)")
    print(f"  {work * 1e3:.2f} ms per step: {work / sb:.1%} of a base step, so an expected ratio of {1 + work / sb:.3f}")
    if vm.config.semantic_encoder == "t5-lora":
        tokens, mask = vm.context.global_window()
        with torch.no_grad():
            vm.lm.video_inputs.memory(tokens, mask)  # warm-up
            start = clock(device)
            vm.lm.video_inputs.memory(tokens, mask)
            took = clock(device) - start
        print(f"\nthe semantic encoder's pass over a window ({tokens.shape[1]} tokens through the T5, once per window)")
        print(f"  {took * 1e3:.1f} ms: {took / sb:.2f} base steps")

if __name__ == "__main__":
    main()
