"""Cost of guiding text and video apart: a three-branch step over a two-branch one.

``--text-cfg T --video-cfg V`` with ``T != V`` runs the rows ``[text+video; text;
null]`` in one batch, 1.5x the rows of MusicGen's ``[cond; null]``. Builds the
small architecture (1024 wide, 24 layers, random weights) with the musicgen-small
preset's adapters, twice (the same weights), and times, side by side:

- Single streaming guided steps (the forward of the branches' batch, the
  combination of their logits, the sampling): one copy steps with two branches,
  the other with three, in back-to-back pairs, each pair's order alternating;
  then the copies swap roles (a fresh stream each), so that a difference
  between the copies' places in memory cancels out. Each copy keeps its own
  streaming state and video layout, as in a generation.
- Whole generations of the tokens (``generation.windows.generate_tokens``: conditioning and
  every step, no decoding), step-locked in two threads taking turns at every LM
  step (``overhead.TakeTurns``), the copies swapping roles every round.

Prints the three-branch / two-branch ratios.

    .venv/bin/python benchmarks/guidance.py [--size small] [--batch 1] [--steps 20] [--seconds 0.5]
        [--rounds 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics

import torch

from overhead import TakeTurns, clock, spread, video_batch
from vidmusician import attach_adapters
from vidmusician.adapter.audiocraft_internals import text_conditions
from vidmusician.testing.random_backbones import random_musicgen
from vidmusician.sizing import load_preset
from vidmusician.generation.windows import generate_tokens
from vidmusician.generation.guidance import GenerationParams, guidance_conditions, guided_logits, sample_token

TEXT = "lo-fi, piano"
# The two settings compared: today's guidance (t = v) and text and video apart.
SETTINGS = {"two": GenerationParams(cfg_coef=3.0), "three": GenerationParams(text_cfg_coef=3.0, video_cfg_coef=5.0)}


def build(config, size: str, device, batch: int, seconds: float):
    """Two copies of an adapted random MusicGen (the same weights), and a video for each of ``batch`` samples."""
    torch.manual_seed(0)
    musicgen = random_musicgen(size, device=device)
    copies = []
    for musicgen in (musicgen, copy.deepcopy(musicgen)):  # a copy: building takes far longer
        torch.manual_seed(1)  # the same adapter weights too
        copies.append(attach_adapters(musicgen, config))
    video = video_batch(config, seconds)
    fields = ("global_feats", "global_mask", "local", "present")
    videos = type(video)(*(getattr(video, f).expand(batch, *getattr(video, f).shape[1:]) for f in fields),
                         video.global_fps, video.frame_rate)
    return copies, copies[0].make_batch(videos)


@contextlib.contextmanager
def stepping(vm, videos, params: GenerationParams):
    """A stream of guided steps of ``vm`` with ``params``' branches; yields ``step()``."""
    lm = vm.lm
    guidance = params.guidance()
    attributes = text_conditions(vm.musicgen, [TEXT] * videos.size)
    conditions = guidance_conditions(lm, attributes, guidance)
    tokens = torch.randint(0, lm.card, (videos.size, lm.num_codebooks, 1), device=vm.device)
    vm.context.set(videos, 0, branches=guidance.video)

    def step():
        logits = guided_logits(lm, tokens, conditions, guidance)
        return sample_token(logits, params)

    try:
        with torch.no_grad(), lm.streaming():
            yield step
    finally:
        vm.context.set(None)


def paired_steps(copies, videos, steps: int, device) -> tuple[dict[str, list[float]], list[float]]:
    """Two-branch and three-branch steps in back-to-back pairs, the copies swapping roles halfway.

    Returns each side's step seconds and every pair's three/two ratio.
    """
    times = {"two": [], "three": []}
    ratios = []
    for phase in range(2):
        roles = {"two": copies[phase], "three": copies[1 - phase]}
        with contextlib.ExitStack() as stack:
            step = {name: stack.enter_context(stepping(roles[name], videos, SETTINGS[name])) for name in roles}
            for i in range(steps + 2):
                pair = {}
                for name in (("two", "three") if i % 2 == 0 else ("three", "two")):
                    start = clock(device)
                    step[name]()
                    pair[name] = clock(device) - start
                if i >= 2:  # the first steps fill caches
                    for name in pair:
                        times[name].append(pair[name])
                    ratios.append(pair["three"] / pair["two"])
    return times, ratios


def generations_in_turns(copies, videos, seconds: float, rounds: int, device) -> list[float]:
    """Token generations of both settings step-locked; each round's three/two ratio (the first is warm-up)."""
    ratios = []
    num_frames = int(seconds * copies[0].config.frame_rate)
    for i in range(rounds + 1):
        roles = {"two": copies[i % 2], "three": copies[1 - i % 2]}
        jobs = {}
        for name, vm in roles.items():
            attributes = text_conditions(vm.musicgen, [TEXT] * videos.size)
            jobs[name] = (vm.lm, lambda vm=vm, a=attributes, p=SETTINGS[name]: generate_tokens(
                vm.musicgen, a, num_frames, p, vm=vm, videos=videos))
        torch.manual_seed(0)  # the threads share the random generator; the tokens do not matter here
        took = TakeTurns(list(roles) if i % 2 == 0 else list(roles)[::-1], device).run(jobs)
        if i > 0:
            ratios.append(took["three"] / took["two"])
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--batch", type=int, default=1, help="samples (videos) per generation")
    parser.add_argument("--steps", type=int, default=20, help="timed step pairs per role assignment")
    parser.add_argument("--seconds", type=float, default=0.5, help="seconds of audio per timed generation")
    parser.add_argument("--rounds", type=int, default=2, help="timed step-locked generations (0: none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    config = load_preset(f"musicgen-{args.size}")
    copies, videos = build(config, args.size, device, args.batch, args.seconds)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.size} architecture with adapters, batch {args.batch} (rows: two branches {2 * args.batch}, "
          f"three {3 * args.batch}), {name}")

    times, ratios = paired_steps(copies, videos, args.steps, device)
    print(f"\none streaming guided step (forward, combination, sampling), {len(ratios)} back-to-back pairs, "
          f"the copies swapping roles halfway")
    for side in ("two", "three"):
        print(f"  {side:<5} branches  median {statistics.median(times[side]) * 1e3:7.1f} ms")
    print(f"  ratio three / two: {statistics.median(ratios):.3f} (median of the pairs' ratios; {spread(ratios)})")

    if args.rounds > 0:
        rounds = generations_in_turns(copies, videos, args.seconds, args.rounds, device)
        print(f"\ntokens of {args.seconds:g} s of audio, both settings step-locked, {args.rounds} rounds "
              f"(the copies swapping roles)")
        print(f"  ratio three / two: {statistics.geometric_mean(rounds):.3f} (geometric mean of the rounds' "
              f"ratios: {', '.join(f'{r:.3f}' for r in rounds)})")


if __name__ == "__main__":
    main()
