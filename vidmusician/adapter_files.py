"""Adapter folders on disk: ``adapter_config.json`` + ``adapter_model.safetensors``.

Pure file I/O: no model object, no backbone. Weights are only ever read with
safetensors (no pickle). Whether an adapter fits a backbone is checked where it
is wired (:func:`vidmusician.adapter.wiring.check_fit`).

Two files cannot be replaced in one atomic step, so a save into a folder that already
holds an adapter, killed between its two renames, leaves the new weights beside the old
config. The weights record the SHA-256 of the config text saved with them, and a save
marks the folder (:data:`SAVING_NAME`, holding that digest) from before its first rename to
after its last: :func:`read_adapter` refuses a folder whose mark names its weights' config
while the config beside them is another. A config edited by hand (no mark, or a mark left
by a save killed before its renames, which names other weights) loads, as do folders
saved before the digests were recorded.

torch is imported only inside the functions that handle tensors: `vidmusician info`
refuses a half-saved folder with :func:`check_saved_whole` and stays light.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from . import __version__
from .config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, adapter_folder
from .errors import AdapterError, ConfigError, VidMusicianError, one_line
from .fileio import atomic_write, native_name, write_safetensors

if TYPE_CHECKING:
    import torch

# adapter_model.safetensors' metadata key for the SHA-256 (hex) of the adapter_config.json text saved with it.
CONFIG_DIGEST = "config_sha256"
# Present in an adapter folder while a save renames its two files (holds the new config's digest):
# left behind, it tells an interrupted save from a config edited by hand.
SAVING_NAME = ".saving"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config_digest(directory: Path) -> str | None:
    """The SHA-256 of the folder's config text, None when there is none to read."""
    try:
        return _sha256((directory / CONFIG_NAME).read_bytes())
    except OSError:
        return None


def write_adapter(directory, config: AdapterConfig, state: dict[str, torch.Tensor]) -> Path:
    """Writes an adapter folder, each file atomically (to a temporary name, then renamed): the
    weights, then the config, both written in full before the first rename.

    Args:
        directory: the folder (created if needed).
        config: the adapter's config; written with this release's ``version`` (the object is left as it is).
        state: adapter tensors, keyed relative to the LM (stored as fp32 on the CPU).

    Returns:
        The folder.
    """
    import torch

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory}: is a file; an adapter is saved as a folder (give a folder name)")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    text = config.replace(version=__version__).to_json().encode("utf-8")
    digest = _sha256(text)
    meta = {"format": "pt", "vidmusician_version": __version__, "backbone": config.backbone, CONFIG_DIGEST: digest}
    marker = directory / SAVING_NAME

    def write_both(config_tmp: Path) -> None:
        # The config's temporary file, the mark, then the whole weights file and its rename;
        # atomic_write renames the config right after, and the mark goes once both are in place.
        config_tmp.write_bytes(text)
        marker.write_text(digest)
        try:
            atomic_write(directory / WEIGHTS_NAME, lambda tmp: write_safetensors(tmp, state, metadata=meta))
        except BaseException:  # not renamed: the folder holds its old pair, as it was, and no mark
            marker.unlink(missing_ok=True)
            raise

    atomic_write(directory / CONFIG_NAME, write_both)
    marker.unlink(missing_ok=True)
    return directory


def read_adapter(directory) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """Reads an adapter folder: ``(config, tensors)``; a missing or damaged file is an AdapterError.

    A path to either of the folder's files means the folder (:func:`~vidmusician.config.adapter_folder`).
    """
    directory = check_folder(directory)
    try:
        config = AdapterConfig.load(directory / CONFIG_NAME)
    except VidMusicianError as exc:
        raise AdapterError(str(exc)) from None
    tensors, meta = _read_weights(directory / WEIGHTS_NAME)
    check_saved_whole(directory, meta.get(CONFIG_DIGEST))
    return config, tensors


def check_folder(directory) -> Path:
    """The adapter folder ``directory`` names (a path to either of its files means the folder), refused
    when it is a file or not there (AdapterError); its files are not read."""
    directory = adapter_folder(directory)
    if directory.is_file():
        raise AdapterError(f"{directory}: a file, not an adapter folder; give the folder that holds "
                           f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    if not directory.is_dir():
        raise AdapterError(f"{directory}: adapter folder not found (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    return directory


def check_saved_whole(directory: Path, saved_with: str | None) -> None:
    """Refuses a folder that a save stopped between its two renames, in one line (AdapterError).

    Args:
        directory: the adapter folder.
        saved_with: the config digest its weights record (:data:`CONFIG_DIGEST`; None: none).
    """
    if _half_saved(directory, saved_with):
        raise AdapterError(f"{directory}: half saved: {WEIGHTS_NAME} is new and {CONFIG_NAME} is the one it "
                           f"replaced (the save was stopped between the two files); save the adapter again, "
                           f"or use the checkpoint before it")


# safetensors' own bound on a header: a larger length is a damaged file, not one to read whole.
MAX_HEADER_BYTES = 100_000_000


def saved_config_digest(path) -> str | None:
    """The config digest a weights file records, read from its header alone: no tensors, no torch.

    A safetensors file begins with its header's length (8 bytes, little-endian), then the
    header, JSON whose ``__metadata__`` holds :data:`CONFIG_DIGEST`.

    Returns:
        The digest; None when none is recorded, or the file is missing or its header unreadable
        (loading the folder says what is wrong with it).
    """
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if size <= MAX_HEADER_BYTES else None
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    digest = meta.get(CONFIG_DIGEST) if isinstance(meta, dict) else None
    return digest if isinstance(digest, str) else None


def _half_saved(directory: Path, saved_with: str | None) -> bool:
    """Whether a save stopped between its renames: the folder's mark names the weights' config (they
    are the new ones; a save killed before it renamed them leaves the old weights and a mark that
    names another), and the config beside them is another one."""
    try:
        marked = (directory / SAVING_NAME).read_text().strip()
    except OSError:
        return False  # no mark: no save was under way (a config edited by hand loads)
    return saved_with is not None and marked == saved_with and _config_digest(directory) != saved_with


def renamed_backbone(directory, name: str) -> dict[str, bytes]:
    """An adapter folder's two files, as bytes, with ``name`` for its backbone in the config and in
    the weights' metadata, and the tensors as they are: what push sends for a backbone folder of this
    machine, whose path names nothing elsewhere (and may hold a user name)."""
    from safetensors.torch import save

    directory = Path(directory)
    config = AdapterConfig.load(directory / CONFIG_NAME)
    tensors, meta = _read_weights(directory / WEIGHTS_NAME)
    text = config.replace(backbone=name).to_json().encode("utf-8")
    meta = {**meta, "backbone": name, CONFIG_DIGEST: _sha256(text)}
    return {CONFIG_NAME: text, WEIGHTS_NAME: save(tensors, metadata=meta)}


def read_adapter_weights(path) -> dict[str, torch.Tensor]:
    """Reads ``adapter_model.safetensors``; a corrupt or truncated file is an AdapterError."""
    return _read_weights(path)[0]


def _read_weights(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of ``adapter_model.safetensors`` (AdapterError when missing or damaged)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: no such file; an adapter folder holds {WEIGHTS_NAME}")
    try:
        with native_name(path) as name, safe_open(name, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path}: corrupt or truncated safetensors file ({one_line(exc)}); re-download or re-save it") from None


def nonfinite_tensor(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinite values (what a
    diverged training leaves), or None."""
    import torch

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
