"""Generation overhead of the video adapters: adapted over base MusicGen wall time.

Builds the small architecture (1024 wide, 24 layers, random weights) twice with
the same seed, attaches the musicgen-small preset's adapters to one, and times
generation of the same audio length with CFG on, alternating base and adapted
runs (ABBA) so both see the same machine state; the ratio is the median of the
rounds' own adapted/base ratios. Prints the ratio and the trainable
parameter counts of every preset. It also times single streaming LM steps (the
unit of generation, CFG batch of 2) in back-to-back pairs, which isolates the
per-step cost of the adapters from sampling and decoding; each pair's own ratio
is taken, so a slow spell of a shared machine weighs on both sides of a pair.
Last, it times the same steps with every base layer skipped on both sides, which
leaves the adapters' own work per step: small and steady where whole steps are
noisy, and the expected ratio follows from it.

    .venv/bin/python benchmarks/overhead.py [--size small] [--seconds 4] [--rounds 3] [--steps 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

from vidmusician import attach_adapters
from vidmusician.backbones import random_musicgen
from vidmusician.config import AdapterConfig, load_preset, preset_names
from vidmusician.context import VideoBatch
from vidmusician.inject import AdaptedLayer, count_adapter_parameters


def video_batch(config: AdapterConfig, seconds: float) -> VideoBatch:
    """Random features for a video of at least one full window, so that the
    cross-attention attends to as many global tokens as in real use."""
    seconds = max(seconds, config.max_global_tokens / config.global_fps)
    frames = int(seconds * config.frame_rate) + 1
    tokens = int(seconds * config.global_fps) + 1
    return VideoBatch(torch.randn(1, tokens, config.global_dim), torch.ones(1, tokens, dtype=torch.bool),
                      torch.rand(1, frames, config.local_dim), torch.ones(1, dtype=torch.bool),
                      config.global_fps, config.frame_rate)


def timed_generate(musicgen, seconds: float, device) -> float:
    musicgen.set_generation_params(duration=seconds, use_sampling=True, top_k=250, cfg_coef=3.0)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    musicgen.generate([None], return_tokens=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_steps(base, adapted, steps: int, device) -> tuple[float, float, list[float]]:
    """One streaming LM step (batch 2: CFG's [cond; uncond]), base and adapted back to back.

    Returns the median seconds of each and the pairs' own adapted/base ratios; the
    order within a pair alternates, so neither side always runs first.
    """
    from audiocraft.modules.conditioners import ConditioningAttributes

    conds = [ConditioningAttributes(text={"description": None})] * 2
    provider = base.lm.condition_provider
    tensors = provider(provider.tokenize(conds))
    tokens = torch.randint(0, base.lm.card, (2, base.lm.num_codebooks, 1), device=device)
    times = {"base": [], "adapted": []}
    with torch.no_grad(), base.lm.streaming(), adapted.lm.streaming():
        for i in range(steps + 2):
            order = (("base", base.lm), ("adapted", adapted.lm))
            for name, lm in (order if i % 2 == 0 else order[::-1]):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                lm(tokens, [], condition_tensors=tensors)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 2:  # the first steps fill caches
                    times[name].append(time.perf_counter() - start)
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
    difference between an adapted and a base model is the adapters' own work.
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


def spread(ratios: list[float]) -> str:
    """The middle half of a list of ratios, as text."""
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"middle half {q1:.3f}-{q3:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of audio per generation")
    parser.add_argument("--rounds", type=int, default=3, help="timed (base, adapted) pairs")
    parser.add_argument("--steps", type=int, default=40, help="timed streaming LM steps per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    print("trainable adapter parameters per preset")
    for name in preset_names():
        c = count_adapter_parameters(load_preset(name))
        print(f"  {name:<16} semantic {c['semantic'] / 1e6:6.2f}M  rhythm {c['rhythm'] / 1e6:6.2f}M  "
              f"total {c['total'] / 1e6:6.2f}M")

    base = random_musicgen(args.size, device=device)
    adapted = random_musicgen(args.size, device=device)
    config = load_preset(f"musicgen-{args.size}")
    vm = attach_adapters(adapted, config)
    vm.set_video(video_batch(config, args.seconds))

    timed_generate(base, 0.2, device), timed_generate(adapted, 0.2, device)  # warm-up
    times = {"base": [], "adapted": []}
    models = {"base": base, "adapted": adapted}
    for i in range(args.rounds):
        # ABBA order: a slow drift of the machine's speed weighs on both sides alike.
        for name in (("base", "adapted") if i % 2 == 0 else ("adapted", "base")):
            times[name].append(timed_generate(models[name], args.seconds, device))
    b, a = statistics.median(times["base"]), statistics.median(times["adapted"])
    rounds = [x / y for x, y in zip(times["adapted"], times["base"])]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n{args.size} architecture, {args.seconds:g} s of audio, CFG on, batch 1, {name}, "
          f"{args.rounds} interleaved rounds")
    print(f"  base     median {b:7.2f} s   best {min(times['base']):7.2f} s   ({args.seconds / b:.2f} x real time)")
    print(f"  adapted  median {a:7.2f} s   best {min(times['adapted']):7.2f} s   ({args.seconds / a:.2f} x real time)")
    print(f"  ratio adapted / base: {statistics.median(rounds):.3f} (median of the rounds' ratios, "
          f"which ran from {min(rounds):.3f} to {max(rounds):.3f})")
    sb, sa, pairs = timed_steps(base, adapted, args.steps, device)
    print(f"\none streaming LM step (CFG batch 2), {args.steps} interleaved pairs")
    print(f"  base     median {sb * 1e3:7.1f} ms")
    print(f"  adapted  median {sa * 1e3:7.1f} ms")
    print(f"  ratio adapted / base: {statistics.median(pairs):.3f} (median of the pairs' ratios; {spread(pairs)})")
    with base_layers_skipped(base.lm), base_layers_skipped(adapted.lm):
        kb, ka, _ = timed_steps(base, adapted, args.steps, device)
    work = ka - kb
    print(f"\nthe adapters' own work in a step (base layers skipped on both sides, {args.steps} interleaved pairs)")
    print(f"  {work * 1e3:.2f} ms per step: {work / sb:.1%} of a base step, so an expected ratio of {1 + work / sb:.3f}")


if __name__ == "__main__":
    main()
