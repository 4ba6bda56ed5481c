"""A process's lifetime: SIGTERM as an exception (every command), and a worker under a launcher
(``accelerate launch`` / torchrun) that ends with it."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager

__all__ = ["Terminated", "stop_on_sigterm", "stop_with_launcher"]


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
