"""Where tensors run, blocks that draw random numbers under their own seed, and what identifies weights."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterable

import torch

from .errors import ConfigError

__all__ = ["default_device", "seeded", "weights_digest"]


def default_device(device=None) -> torch.device:
    """The device a caller asked for, or CUDA when available, else the CPU.

    Args:
        device: A ``torch.device``, a name ('cuda', 'cuda:1', 'cpu'), or None.

    Returns:
        The ``torch.device``; ``str()`` of it is the name audiocraft's loaders expect.

    Raises:
        ConfigError: not a device name, a device type other than CPU, CUDA (and 'meta',
            shapes only), or a CUDA device this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: not a device name; use cpu, cuda or cuda:N") from None
    # The models are tested on CPUs and CUDA GPUs ('meta' builds shapes without weights); Apple's
    # 'mps' where the machine has it. Another type, or an mps without the GPU, would fail deep inside torch.
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r}: no Apple GPU (MPS) here; use cpu (or leave the device out)")
    if device.type not in ("cpu", "cuda", "meta", "mps"):
        raise ConfigError(f"device {str(device)!r}: vidmusician runs on cpu, cuda (cuda:N) or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r}: no CUDA device here; use cpu (or leave the device out)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def generation_device(device=None) -> torch.device:
    """:func:`default_device` for a device to generate on: one with weights (not 'meta')."""
    device = default_device(device)
    if device.type == "meta":
        raise ConfigError("device 'meta' holds no weights to generate with; use cpu or cuda")
    return device


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


def weights_digest(tensors: Iterable[torch.Tensor], salt: str = "") -> str:
    """The hex SHA-256 (32 digits) of a set of weights: equal for the same values, whatever holds them.

    Each tensor counts by its shape and float32 bytes (integers as they are), taken in the
    sorted order of the tensors' own hashes: neither the parameter names nor their order
    nor the precision or device they are held in change it.

    Args:
        tensors: the weights, e.g. a module's ``state_dict().values()``.
        salt: what else the digest covers (a class name, a config).
    """
    digests = []
    for tensor in tensors:
        t = tensor.detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h = hashlib.sha256(f"{tuple(t.shape)} {t.dtype}".encode())
        h.update(t.contiguous().numpy().tobytes())
        digests.append(h.digest())
    h = hashlib.sha256(salt.encode())
    for digest in sorted(digests):
        h.update(digest)
    return h.hexdigest()[:32]
