"""A process's lifetime: SIGTERM as an exception (every command), a worker under a launcher
(``accelerate launch`` / torchrun) that ends with it, and a command that becomes such a launcher."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import NoReturn

__all__ = ["Terminated", "launch_here", "stop_on_sigterm", "stop_with_launcher"]


class Terminated(BaseException):
    """SIGTERM arrived (what schedulers send before a kill). Not an Exception: nothing may swallow it."""


@contextmanager
def stop_on_sigterm():
    """Turns SIGTERM into :class:`Terminated` in the main thread (and restores the old handler after).

    Python's default for SIGTERM ends the process on the spot: no ``finally`` runs, and
    a file being written stays as its hidden temporary file. As an exception it unwinds
    like Ctrl-C: a shard or output being written is removed, finished work stays. The
    CLI runs every command under it; a command may install its own inside (``prepare``
    says what it kept), and the outer one is restored after.
    """
    def handler(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def stop_with_launcher(program: str, interval: float = 1.0, grace: float = 60.0) -> None:
    """Ends this worker when the launcher that started it dies.

    ``accelerate launch`` / torchrun start each worker in its own session, so a
    launcher killed with SIGKILL (or lost with its terminal) leaves its workers
    training on, holding GPUs. A daemon thread watches the parent: once this
    process has been handed to another one, the launcher is gone and the worker
    stops as a SIGTERM would stop it. Checkpoints already written stay; resume
    with ``--resume``. A worker still alive ``grace`` seconds later is blocked where
    Python's SIGTERM handler never runs (waiting in a collective for peers that are
    gone): it is killed, so no worker outlives its launcher for good.
    """
    import threading

    launcher = os.getppid()

    def say(line: str) -> None:
        try:
            print(f"{program}: {line}", file=sys.stderr, flush=True)
        except (OSError, ValueError):  # stderr was a pipe to the launcher, gone with it
            pass

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != launcher:
                say("the launcher is gone; stopping this worker")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(grace)
                say(f"still running {grace:g} s after SIGTERM; killing this worker")
                os.kill(os.getpid(), signal.SIGKILL)
                return

    threading.Thread(target=watch, name="stop-with-launcher", daemon=True).start()


def launch_command(num_processes: int, module: list[str], mixed_precision: str, port: int) -> list[str]:
    """``accelerate launch`` running ``python -m MODULE...`` in ``num_processes`` processes on this machine."""
    # Every value the launcher would otherwise take from a config file or a default (with a warning).
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", *module]


def launch_here(num_processes: int, module: list[str], mixed_precision: str) -> NoReturn:
    """Replaces this process with :func:`launch_command`'s launcher: DDP over this machine's GPUs, one
    process each (over gloo on the CPU where there is no GPU).

    Replaced, not waited for: Ctrl-C, a scheduler's SIGTERM or a closed terminal reach the launcher
    as they reach an ``accelerate launch`` typed by hand (it passes them to its workers, each in its own
    session), and the launcher's exit status is the command's.
    """
    import socket

    # A free port, not accelerate's fixed default (29500): two runs on one machine must not meet.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = launch_command(num_processes, module, mixed_precision, port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
