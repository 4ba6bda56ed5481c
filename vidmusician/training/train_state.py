"""Training checkpoints: adapter, optimizer, scheduler, RNG and step; never the frozen backbone.

A checkpoint is a folder ``OUTPUT/checkpoints/step-00001000``::

    adapter_config.json, adapter_model.safetensors   the adapter (a loadable adapter folder)
    optimizer.safetensors   AdamW state, keyed by adapter parameter name
    trainer_state.json      step, optimizer hyper-parameters, scheduler, grad scaler, RNG per process,
                            the mixed precision trained in

It is written into a hidden temporary folder, synced, renamed into place in one
``os.replace``, and only then named by ``checkpoints/latest`` (itself replaced
atomically). A kill at any moment leaves ``latest`` naming a complete
checkpoint. Tensors go through safetensors and the rest through JSON: nothing
the project wrote is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..adapter_files import WEIGHTS_NAME, nonfinite_tensor, read_adapter_weights
from ..errors import AdapterError, ConfigError, DataError, VidMusicianError, one_line
from ..fileio import atomic_write, native_name, write_safetensors
from .launch import check_stop

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


@dataclass
class TrainState:
    """What the loop counts; the data position is derived from ``step``."""

    step: int = 0
    rng: dict | None = None  # this process's RNG state to restore, when resumed


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names, else the newest checkpoint folder, or None.

    Whether it is whole is checked when it is read (:func:`resume`).
    """
    ckpts = Path(run_dir) / CHECKPOINTS
    pointer = ckpts / LATEST
    if pointer.is_file():
        path = ckpts / pointer.read_text().strip()
        if (path / STATE_NAME).is_file():
            return path
    folders = sorted(p for p in ckpts.glob("step-*") if p.is_dir())
    return folders[-1] if folders else None


def interrupted_line(step: int, run_dir) -> str:
    """What an interrupted run says: the step it reached and where ``--resume`` goes on from."""
    latest = latest_checkpoint(run_dir) if Path(run_dir).is_dir() else None
    if latest is None:
        return f"interrupted at step {step}, before the first checkpoint: the same command starts over"
    return (f"interrupted at step {step}; the last checkpoint is step {int(latest.name.removeprefix('step-'))}: "
            f"`--resume` continues from there")


def saved_precision(run_dir) -> tuple[str | None, Path | None]:
    """The mixed precision (``no``, ``fp16``, ``bf16``) a run's checkpoints were trained in, and the
    checkpoint that says it: the newest whose state is readable, in :func:`resume`'s order (a damaged
    one is passed over there too). ``(None, None)`` where none says: written before checkpoints
    recorded it, or none readable (:func:`resume` reports that)."""
    for path in sorted((p for p in (Path(run_dir) / CHECKPOINTS).glob("step-*") if p.is_dir()), reverse=True):
        try:
            saved = json.loads((path / STATE_NAME).read_text())
        except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
            continue
        if isinstance(saved, dict):
            return saved.get("mixed_precision"), path
    return None, None


def parameter_names(vm) -> dict[int, str]:
    """``id(parameter) -> name`` for every adapter parameter (names as in the adapter file)."""
    # Imported here: the module's other readers (a run's checks before it starts) need no audiocraft.
    from ..adapter.wiring import adapter_modules

    return {id(p): f"{prefix}.{name}" for mods in adapter_modules(vm.lm).values()
            for prefix, module in mods.items() for name, p in module.named_parameters()}


def save_checkpoint(run_dir, state: TrainState, vm, optimizer, scheduler, accelerator, keep: int) -> Path:
    """Writes a checkpoint (main process), atomically; every process must call it (RNG is gathered).

    Raises:
        AdapterError: the adapter's weights hold NaN or infinite values (the training
            diverged): nothing is written, and the last checkpoint stays the latest.
            Every process holds the same weights, so every process raises here.
    """
    check_finite(vm, state.step, run_dir)
    from accelerate.utils import gather_object
    rng = gather_object([_rng_state()])  # one entry per process, in rank order
    ckpts = Path(run_dir) / CHECKPOINTS
    final = ckpts / f"step-{state.step:08d}"
    if accelerator.is_main_process:
        tmp = ckpts / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a kill during an earlier save
        tmp.mkdir(parents=True)
        vm.save_pretrained(tmp)
        tensors, groups = _flatten_optimizer(optimizer.state_dict(), _optimizer_names(vm, optimizer))
        write_safetensors(tmp / OPTIMIZER_NAME, tensors)
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        meta = {"step": state.step, "param_groups": groups, "scheduler": scheduler.state_dict(),
                "scaler": scaler, "rng": rng, "num_processes": accelerator.num_processes,
                "mixed_precision": accelerator.mixed_precision}
        (tmp / STATE_NAME).write_text(json.dumps(meta, sort_keys=True))
        _fsync_tree(tmp)
        if final.exists():  # a save of this step that `latest` never named (killed before the pointer)
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write(ckpts / LATEST, lambda t: Path(t).write_text(final.name + "\n"))
        _fsync_dir(ckpts)
        old = sorted(p for p in ckpts.glob("step-*") if p.is_dir() and p != final)
        for path in old[:max(0, len(old) - (keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_finite(vm, step: int, run_dir) -> None:
    """AdapterError when an adapter weight is NaN or infinite (a diverged training), naming the
    last checkpoint that ``--resume`` would continue from."""
    broken = nonfinite_tensor(vm.adapter_state_dict())
    if broken is None:
        return
    last = latest_checkpoint(run_dir)
    kept = (f"the last checkpoint, {last.name}, is kept" if last is not None else "no checkpoint was written")
    raise AdapterError(f"step {step}: adapter weight {broken} holds NaN or infinite values: the training "
                       f"diverged (a lower lr, or grad_clip, keeps it stable); {kept}")


@dataclass
class Checkpoint:
    """A checkpoint read whole from disk, checked before anything live is touched."""

    path: Path
    meta: dict
    adapter: dict
    optimizer: dict


def read_checkpoint(path) -> Checkpoint:
    """Reads every file of a checkpoint; a missing, truncated or corrupt one is a DataError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    reading = STATE_NAME  # the file being read: the error names it
    try:
        meta = json.loads((path / STATE_NAME).read_text())
        int(meta["step"]), meta["rng"], meta["param_groups"], meta["scheduler"]  # noqa: B018 (all present)
        reading = WEIGHTS_NAME
        adapter = read_adapter_weights(path / WEIGHTS_NAME)
        reading = OPTIMIZER_NAME
        with native_name(path / OPTIMIZER_NAME) as name:
            optimizer = load_file(name)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, VidMusicianError) as exc:
        raise DataError(f"{path}: damaged checkpoint: {reading} ({one_line(exc)})") from None
    return Checkpoint(path, meta, adapter, optimizer)


def resume(run_dir, vm, optimizer, scheduler, accelerator, say=print) -> TrainState:
    """Restores the newest complete checkpoint of a run into live training objects.

    A damaged checkpoint (truncated by a full disk, overwritten) is reported and
    the one before it is used; when none is readable, a DataError names them and
    the run does not start over silently. The RNG state comes back in
    ``TrainState.rng``: the caller restores it with :func:`restore_rng` where it
    is next drawn from (after the data iterator is made, which takes a seed).
    """
    ckpts = Path(run_dir) / CHECKPOINTS
    candidates = sorted((p for p in ckpts.glob("step-*") if p.is_dir()), reverse=True)
    damaged = []
    for path in candidates:
        try:
            ckpt = read_checkpoint(path)
            _apply(ckpt, vm, optimizer, scheduler, accelerator)
        except DataError as exc:
            check_stop()  # a read a SIGTERM broke is no damaged checkpoint: the run stops, this one stays
            damaged.append(str(exc))
            say(f"warning: {exc}; trying the checkpoint before it")
            continue
        if damaged:
            say(f"warning: resuming from {path.name}, the newest complete checkpoint")
        meta = ckpt.meta
        rng = meta["rng"]
        return TrainState(step=int(meta["step"]), rng=rng[accelerator.process_index % len(rng)])
    raise DataError(f"{ckpts}: no complete checkpoint to resume from ({'; '.join(damaged) or 'none found'}); "
                    f"delete {ckpts} to start over")


def _apply(ckpt: Checkpoint, vm, optimizer, scheduler, accelerator) -> None:
    meta, path = ckpt.meta, ckpt.path
    try:
        vm.load_adapter_state_dict(ckpt.adapter, source=str(path))
    except VidMusicianError as exc:
        raise DataError(f"{path}: damaged checkpoint ({exc})") from None
    names = _optimizer_names(vm, optimizer)
    optimizer.load_state_dict(_unflatten_optimizer(ckpt.optimizer, meta["param_groups"], names, path))
    scheduler.load_state_dict(meta["scheduler"])
    if accelerator.scaler is not None and meta.get("scaler") is not None:
        accelerator.scaler.load_state_dict(meta["scaler"])
    if meta["num_processes"] != accelerator.num_processes:
        warnings.warn(f"{path}: saved by {meta['num_processes']} processes, resumed by "
                      f"{accelerator.num_processes}: the data order and global batch change")


def restore_rng(state: TrainState) -> None:
    """Sets this process's Python, NumPy, torch and CUDA RNG states to the checkpoint's."""
    if state.rng is not None:
        _set_rng_state(state.rng)


def _optimizer_names(vm, optimizer) -> list[list[str]]:
    """Parameter names of each optimizer group, in the optimizer's order."""
    names = parameter_names(vm)
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _flatten_optimizer(state_dict: dict, names: list[list[str]]):
    """Optimizer state -> (tensors keyed ``name.slot``, JSON-able groups with parameter names)."""
    order = [n for group in names for n in group]
    tensors = {}
    for index, slots in state_dict["state"].items():
        for slot, value in slots.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{order[index]}.{slot}"] = value.detach().cpu().contiguous()
    groups = []
    for group, group_names in zip(state_dict["param_groups"], names):
        group = {k: list(v) if isinstance(v, tuple) else v for k, v in group.items() if k != "params"}
        groups.append(dict(group, params=group_names))
    return tensors, groups


def _unflatten_optimizer(tensors: dict, groups: list[dict], names: list[list[str]], source: Path) -> dict:
    saved = [g["params"] for g in groups]
    if saved != names:
        raise ConfigError(f"{source}: the checkpoint trained other parameters than this run "
                        f"(another recipe's trainable groups?); resume with the recipe it was made with")
    index = {name: i for i, name in enumerate(n for group in names for n in group)}
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        name, slot = key.rsplit(".", 1)
        if name not in index:
            raise DataError(f"{source}: damaged checkpoint (unknown optimizer tensor {key})")
        state.setdefault(index[name], {})[slot] = tensor
    ids, groups_out = iter(range(len(index))), []
    for group in groups:
        groups_out.append(dict(group, params=[next(ids) for _ in group["params"]]))
    return {"state": state, "param_groups": groups_out}


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def _set_rng_state(s: dict) -> None:
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    name, keys, *rest = s["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(s["torch"], dtype=torch.uint8))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(c, dtype=torch.uint8) for c in s["cuda"]])


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
