"""Adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors``.

Weights are only ever read with safetensors (no pickle). Loading checks that the
adapter fits the backbone and names what differs when it does not.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .config import CONFIG_NAME, AdapterConfig
from .errors import AdapterError, VidMusicianError
from .fileio import atomic_write

WEIGHTS_NAME = "adapter_model.safetensors"


def save_adapter(vm, directory) -> Path:
    """Writes the adapter folder atomically (each file to a temporary name, then renamed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in vm.adapter_state_dict().items()}
    from . import __version__

    vm.config.version = __version__
    meta = {"format": "pt", "vidmusician_version": __version__, "backbone": vm.config.backbone}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=meta))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(vm.config.to_json()))
    return directory


def read_adapter_weights(path) -> dict[str, torch.Tensor]:
    """Reads ``adapter_model.safetensors``; a corrupt or truncated file is an AdapterError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: no such file; an adapter folder holds {WEIGHTS_NAME}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path}: corrupt or truncated safetensors file ({exc}); re-download or re-save it") from None


def load_adapter_state(vm, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Copies adapter tensors into ``vm``; missing keys or shape mismatches are errors, extra keys warn."""
    own = vm.adapter_state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise AdapterError(f"{source}: missing {len(missing)} adapter tensors (first: {missing[0]}); "
                           f"the file does not match its adapter_config.json")
    unknown = sorted(set(state) - set(own))
    if unknown:
        warnings.warn(f"{source}: ignoring {len(unknown)} unknown tensors (first: {unknown[0]}); "
                      f"written by a newer vidmusician?")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise AdapterError(f"{source}: tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                           f"expected {tuple(own[bad[0]].shape)}")
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(state[key].to(target.dtype))


def load_adapter(directory, backbone=None, device=None):
    """Loads an adapter folder onto a backbone (a loaded MusicGen, or a name/path to load)."""
    from .backbones import backbone_spec, load_backbone
    from .adapter.wiring import attach_adapters

    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterError(f"{directory}: adapter folder not found (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = AdapterConfig.load(directory / CONFIG_NAME)
    except VidMusicianError as exc:
        raise AdapterError(str(exc)) from None
    state = read_adapter_weights(directory / WEIGHTS_NAME)
    if backbone is None or isinstance(backbone, (str, os.PathLike)):
        backbone = load_backbone(backbone or config.backbone, device=device)
    spec = backbone_spec(backbone)
    diffs = [f"{k}: adapter {getattr(config, k)} vs backbone {getattr(spec, k)}"
             for k in ("dim", "num_layers", "frame_rate") if getattr(config, k) != getattr(spec, k)]
    if diffs:
        raise AdapterError(f"{directory}: adapter made for {config.backbone!r} does not match backbone "
                           f"{spec.name!r} ({'; '.join(diffs)})")
    vm = attach_adapters(backbone, config)
    vm.load_adapter_state_dict(state, source=str(directory))
    vm.eval()
    return vm
