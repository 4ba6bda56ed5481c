"""One random stream per sample of a batch, so that a sample's music does not depend on its batch.

A batch sampled under one seed draws every row's tokens from one stream: row 2's
draws follow row 1's, so a video's music changes with the videos beside it.
:class:`RowSeeds` keeps one RNG state per row, each started from the row's own
seed, and samples each row under its own state. A row then draws exactly what a
batch of that sample alone, seeded with the same seed, draws (``generate_many`` in
:mod:`vidmusician.batch` builds on it: a video gets the same tokens in any batch).

The states are the device's own generator states (swapped in for each row), so the
sampling functions stay audiocraft's own, unchanged.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["RowSeeds"]


class RowSeeds:
    """Per-row RNG states of a batch, for the device the sampling runs on.

    Args:
        seeds: one integer seed per row.
        device: where the sampled tensors live (their generator's device).
    """

    def __init__(self, seeds: Sequence[int], device):
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self.states = []
        with self._forked():
            for seed in seeds:
                torch.manual_seed(int(seed))
                self.states.append(self._read_state())

    def __len__(self) -> int:
        return len(self.states)

    def sample(self, draw: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """``draw`` applied to each row of ``inputs`` (``[B, ...]``) under that row's RNG state.

        The caller's own RNG state is left as it was.
        """
        assert inputs.shape[0] == len(self.states), (inputs.shape, len(self.states))
        rows = []
        with self._forked():
            for i in range(len(self.states)):
                self._load_state(self.states[i])
                rows.append(draw(inputs[i:i + 1]))
                self.states[i] = self._read_state()
        return torch.cat(rows)

    def _forked(self):
        return torch.random.fork_rng(devices=[self.device] if self._cuda else [])

    def _read_state(self) -> torch.Tensor:
        return torch.cuda.get_rng_state(self.device) if self._cuda else torch.get_rng_state()

    def _load_state(self, state: torch.Tensor) -> None:
        if self._cuda:
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)
