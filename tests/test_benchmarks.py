"""The benchmarks' own machinery (their timings are printed by the scripts, never asserted)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import random_video_batch, tiny_config
from vidmusician import attach_adapters

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Step(nn.Module):
    """Stands in for an LM: records which model ran each step, optionally sleeping in it."""

    def __init__(self, name: str, log: list, sleep: float = 0.0):
        super().__init__()
        self.name, self.log, self.sleep = name, log, sleep

    def forward(self):
        self.log.append(self.name)
        time.sleep(self.sleep)


def test_generations_take_turns_step_by_step_and_time_their_own_turns():
    overhead = load_script("overhead")
    log = []
    slow, fast = Step("slow", log, sleep=0.05), Step("fast", log)

    def steps(lm, n):
        return lambda: [lm() for _ in range(n)]

    turns = overhead.TakeTurns(["slow", "fast"], torch.device("cpu"))
    seconds = turns.run({"slow": (slow, steps(slow, 3)), "fast": (fast, steps(fast, 5))})
    # Strict alternation while both run; the longer one finishes alone.
    assert log == ["slow", "fast", "slow", "fast", "slow", "fast", "fast", "fast"]
    # Each is timed over its own turns: the fast one's time holds none of the slow one's sleeps.
    assert seconds["slow"] >= 0.15
    assert seconds["fast"] < 0.05


def test_a_failing_generation_is_reported_and_the_other_one_finishes():
    overhead = load_script("overhead")
    log = []
    good, bad = Step("good", log), Step("bad", log)

    def fail():
        bad()
        raise RuntimeError("generation failed")

    turns = overhead.TakeTurns(["bad", "good"], torch.device("cpu"))
    with pytest.raises(RuntimeError, match="generation failed"):
        turns.run({"bad": (bad, fail), "good": (good, lambda: [good() for _ in range(3)])})
    assert log == ["bad", "good", "good", "good"]


def test_toggled_generation_runs_adapters_at_every_other_step(tiny):
    overhead = load_script("overhead")
    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    vm.set_video(random_video_batch(1, [True]))
    layer = vm.lm.video_inputs.layers[0]
    calls, before_step = [], []
    layer.register_forward_pre_hook(lambda *_: calls.append(1))
    vm.lm.register_forward_pre_hook(lambda *_: before_step.append(len(calls)))
    times = overhead.generate_toggled(vm, 1.0, torch.device("cpu"))
    per_step = [b - a for a, b in zip(before_step, before_step[1:] + [len(calls)])]
    assert len(per_step) > 10
    assert per_step == [1, 0] * (len(per_step) // 2) + [1] * (len(per_step) % 2)
    # Steps 1 and 2 warm up and the last one has no end mark; the rest alternate sides.
    assert len(times["base"]) + len(times["adapted"]) == len(per_step) - 3
    assert abs(len(times["base"]) - len(times["adapted"])) <= 1
    assert vm.lm.transformer.layers[0] is layer  # the adapters are on again


def test_guidance_benchmark_steps_two_and_three_branches_side_by_side(tiny, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its timing helpers from overhead.py
    guidance = load_script("guidance")
    copies = []
    for _ in range(2):
        musicgen = tiny()
        copies.append(attach_adapters(musicgen, tiny_config(musicgen)))
    videos = copies[0].make_batch(random_video_batch(2, [True, False]))
    rows = [[], []]  # model rows of every LM forward, per copy
    for vm, log in zip(copies, rows):
        vm.lm.register_forward_pre_hook(lambda m, args, log=log: log.append(args[0].shape[0]))
    times, ratios = guidance.paired_steps(copies, videos, steps=3, device=torch.device("cpu"))
    assert len(times["two"]) == len(times["three"]) == len(ratios) == 6
    # Copy 0 steps two branches (4 rows), then, swapped, three (6 rows); copy 1 the other way round.
    assert rows == [[4] * 5 + [6] * 5, [6] * 5 + [4] * 5]
    rows[0].clear(), rows[1].clear()
    ratios = guidance.generations_in_turns(copies, videos, seconds=0.2, rounds=1, device=torch.device("cpu"))
    assert len(ratios) == 1 and ratios[0] > 0
    assert set(rows[0]) == set(rows[1]) == {4, 6}  # the copies swapped settings between the rounds
