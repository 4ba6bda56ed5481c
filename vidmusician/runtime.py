"""Where tensors run, and blocks that draw random numbers under their own seed."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["default_device", "seeded"]


def default_device(device=None) -> torch.device:
    """The device a caller asked for, or CUDA when available, else the CPU.

    Args:
        device: A ``torch.device``, a name ('cuda', 'cuda:1', 'cpu'), or None.

    Returns:
        The ``torch.device``; ``str()`` of it is the name audiocraft's loaders expect.
    """
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def seeded(seed: int | None, device=None):
    """Runs the block with torch's RNG seeded, then gives the caller back its own RNG state.

    Building random weights or sampling under a seed must not move the caller's
    random stream: the state is forked and restored on exit.

    Args:
        seed: The seed; None runs the block unseeded (and forks nothing).
        device: A CUDA device whose RNG the block also draws from, forked with the
            CPU's; None or a CPU device: only the CPU's is forked.
    """
    if seed is None:
        yield
        return
    device = torch.device(device) if device is not None else None
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
