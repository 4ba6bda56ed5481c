"""Adapter folders on disk: ``adapter_config.json`` + ``adapter_model.safetensors``.

Pure file I/O: no model object, no backbone. Weights are only ever read with
safetensors (no pickle). Whether an adapter fits a backbone is checked where it
is wired (:func:`vidmusician.adapter.wiring.check_fit`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import __version__
from .config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, adapter_folder
from .errors import AdapterError, ConfigError, VidMusicianError, one_line
from .fileio import atomic_write, native_name, write_safetensors


def write_adapter(directory, config: AdapterConfig, state: dict[str, torch.Tensor]) -> Path:
    """Writes an adapter folder, each file atomically (to a temporary name, then renamed).

    Args:
        directory: the folder (created if needed).
        config: the adapter's config; written with this release's ``version`` (the object is left as it is).
        state: adapter tensors, keyed relative to the LM (stored as fp32 on the CPU).

    Returns:
        The folder.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory}: is a file; an adapter is saved as a folder (give a folder name)")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    config = config.replace(version=__version__)
    meta = {"format": "pt", "vidmusician_version": __version__, "backbone": config.backbone}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: write_safetensors(tmp, state, metadata=meta))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(config.to_json()))
    return directory


def read_adapter(directory) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """Reads an adapter folder: ``(config, tensors)``; a missing or damaged file is an AdapterError.

    A path to either of the folder's files means the folder (:func:`~vidmusician.config.adapter_folder`).
    """
    directory = adapter_folder(directory)
    if directory.is_file():
        raise AdapterError(f"{directory}: a file, not an adapter folder; give the folder that holds "
                           f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    if not directory.is_dir():
        raise AdapterError(f"{directory}: adapter folder not found (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = AdapterConfig.load(directory / CONFIG_NAME)
    except VidMusicianError as exc:
        raise AdapterError(str(exc)) from None
    return config, read_adapter_weights(directory / WEIGHTS_NAME)


def read_adapter_weights(path) -> dict[str, torch.Tensor]:
    """Reads ``adapter_model.safetensors``; a corrupt or truncated file is an AdapterError."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: no such file; an adapter folder holds {WEIGHTS_NAME}")
    try:
        with native_name(path) as name:
            return load_file(name)
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path}: corrupt or truncated safetensors file ({one_line(exc)}); re-download or re-save it") from None


def nonfinite_tensor(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinite values (what a
    diverged training leaves), or None."""
    return next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)


def check_finite(tensors: dict[str, torch.Tensor], source) -> None:
    """Refuses weights holding NaN or infinite values, what a diverged training saves (AdapterError)."""
    broken = nonfinite_tensor(tensors)
    if broken is not None:
        raise AdapterError(f"{source}: tensor {broken} holds NaN or infinite values (the training diverged); "
                           f"use an earlier checkpoint")


def check_adapter_tensors(config: AdapterConfig, tensors: dict[str, torch.Tensor], source) -> None:
    """What a folder's weights must be to load onto any backbone its config fits, without the
    backbone: finite, and as many values as the config's adapters hold (AdapterError)."""
    from .adapter.parameter_counts import count_adapter_parameters

    check_finite(tensors, source)
    held, expected = sum(v.numel() for v in tensors.values()), count_adapter_parameters(config)["total"]
    if held != expected:
        raise AdapterError(f"{source}: {WEIGHTS_NAME} holds {held:,} adapter values where its {CONFIG_NAME} "
                           f"describes {expected:,}; the file does not match its config")
