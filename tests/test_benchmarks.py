"""The benchmarks' own machinery (their timings are printed by the scripts, never asserted)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from torch import nn

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
