"""Writing files so that a failure never leaves a half-written one."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


# Bytes atomic_write adds to a file's name for its temporary one (".NAME.PID.TID.part").
TEMP_NAME_BYTES = 40


def name_room(folder) -> int:
    """Bytes a file name in ``folder`` may have, leaving room for :func:`atomic_write`'s temporary name."""
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    return name_max - TEMP_NAME_BYTES


def _default_mode() -> int:
    # umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], durable: bool = False) -> Path:
    """Calls ``write(tmp)`` on a hidden temporary name beside ``path``, then renames it to ``path``.

    The rename is atomic within a folder: ``path`` is either the complete new file
    or untouched, and the temporary file is removed on any failure. The result gets
    the usual umask permissions (some writers, e.g. safetensors, create 0600 files).

    Args:
        path: the file to write.
        write: writes the content to the path it is given.
        durable: also sync the file before the rename and the folder after it, so the
            new file survives a power loss (for a file whose predecessors are then deleted).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        write(tmp)
        os.chmod(tmp, _default_mode())
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as exc:
        if exc.filename is None or str(exc.filename) == str(tmp):
            # Name the file the user asked for, not the temporary one (a full disk says no
            # file name at all).
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def held_lock(path: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block.

    Processes that build the same cached file take it in turn, so the second one finds
    the file built instead of building it again. Where ``fcntl`` is missing (Windows) the
    block runs unlocked: a duplicate build there costs time, never a torn file (the
    writer is :func:`atomic_write`).
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def native_name(path: str | os.PathLike) -> Iterator[str]:
    """A name for ``path`` that libraries written in C or Rust (decord, safetensors) can open.

    They take names as UTF-8 text, which a file name that is not UTF-8 (the file
    system allows any bytes; Python holds them as lone surrogates) cannot be. Such a
    file is opened here and named through ``/proc/self/fd`` while the block runs; a
    library that opens it inside keeps its own descriptor (or mapping) after.

    Raises:
        OSError: the file cannot be opened (it is missing, a folder, ...).
    """
    name = os.fspath(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        if not os.path.isdir("/proc/self/fd"):  # not Linux: let the library say it cannot
            yield name
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield name


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Writes ``tensors`` as a safetensors file, serialized in memory and written by Python.

    safetensors' own writer takes the name as UTF-8 text, which a file name that is
    not UTF-8 cannot be (see :func:`native_name`).
    """
    from safetensors.torch import save

    Path(path).write_bytes(save(tensors, metadata=metadata))
