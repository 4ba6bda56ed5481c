"""A process's lifetime: SIGTERM as an exception (every command), a worker under a launcher
(``accelerate launch`` / torchrun) that ends with it, and a command that runs such a launcher."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager

__all__ = ["Terminated", "check_stop", "first_process", "launch_here", "say_last", "stop_on_sigterm",
           "stop_with_launcher", "stopped_by_sigterm"]


class Terminated(BaseException):
    """SIGTERM arrived (what schedulers send before a kill). Not an Exception: nothing may swallow it."""


# Set for the processes :func:`launch_here` starts (one command's, whose signals all come from it): a
# folder of the launch, where each leaves its last line for the launcher to choose from (:func:`say_last`).
LAUNCHED_HERE = "VIDMUSICIAN_LAUNCHED_HERE"


def first_process() -> bool:
    """Whether this is process 0 of a launch (``accelerate launch`` / torchrun set ``RANK``), or no launch.

    What every process of a launch would say alike (a warning about the recipe, the step a run
    was interrupted at) is said by this one alone: once, not once per process.
    """
    return int(os.environ.get("RANK", "0")) == 0


def say_last(line: str, stop: bool = False, every_process: bool = True) -> None:
    """Says a command's last line on stderr: a user error, or (``stop``) the signal that stopped it.

    Under :func:`launch_here` (``--num-processes``) the line is left for the launcher, which says
    what one process would: each different error once (every process meets the same ones: a
    backbone not in the cache offline, data of another codec), and, when a signal stopped the
    run (or no error was left), the first process's stop line. A line that cannot be left there
    (a full disk, the launcher gone) is said here. Otherwise (no launcher, or one typed by hand,
    where a signal may reach one process alone: one machine of several stopped) it is said here,
    by every process, or by process 0 alone where ``every_process`` is False (a line the others
    would repeat).
    """
    folder = os.environ.get(LAUNCHED_HERE)
    if folder:
        rank = int(os.environ.get("RANK", "0"))
        try:
            with open(os.path.join(folder, f"{rank}.{'stop' if stop else 'error'}"), "a", encoding="utf-8",
                      errors="surrogateescape", newline="") as f:
                f.write(line + "\n")
            return
        except OSError:
            pass
    if folder or every_process or first_process():
        print(line, file=sys.stderr)


def _say_last_lines(folder: str, signalled: bool) -> None:
    """What :func:`say_last` left in ``folder``, as one process would say it (see there)."""
    lines: dict[str, dict[int, list[str]]] = {"error": {}, "stop": {}}
    for name in os.listdir(folder):  # RANK.error, RANK.stop
        rank, kind = name.split(".")
        with open(os.path.join(folder, name), encoding="utf-8", errors="surrogateescape", newline="") as f:
            lines[kind][int(rank)] = f.read().split("\n")[:-1]  # lines may hold any other separator
    errors = []
    for rank in sorted(lines["error"]):
        errors += [line for line in lines["error"][rank] if line not in errors]
    # After an error the others were stopped by the launcher: their lines would mislead, unless a signal
    # stopped the run too.
    stops = lines["stop"][min(lines["stop"])] if lines["stop"] and (signalled or not errors) else []
    for line in errors + stops:
        print(line, file=sys.stderr)


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
        _sigterm["received"] = True
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone (and the main thread's record of one)
        yield
        return
    before, _sigterm["received"] = _sigterm["received"], False
    try:
        yield
        check_stop()  # a stop something swallowed on the way (a damaged-file fallback, say) is still the stop
    except BaseException as exc:
        if stopped_by_sigterm(exc) and not isinstance(exc, Terminated):
            raise Terminated() from exc  # an error a library made of the signal: the stop it is
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
        _sigterm["received"] = before


# Whether SIGTERM arrived since the innermost stop_on_sigterm began (as it was before, once that ends).
_sigterm = {"received": False}


def stopped_by_sigterm(exc: BaseException) -> bool:
    """Whether ``exc`` is how a SIGTERM under :func:`stop_on_sigterm` ended the work: :class:`Terminated`,
    or any error (an Exception: a stop of a command's own, as training's, is kept) after one arrived in
    the scope still open. A signal that lands inside a library's call
    can come out as that library's own error (in safetensors' ``get_tensor``, torch's "ValueError: could
    not determine the shape of object type 'torch.storage.UntypedStorage'"), which would otherwise end in
    a traceback, or count as a bad file's error; the scope raises it as :class:`Terminated` when it ends."""
    return isinstance(exc, Terminated) or (_sigterm["received"] and isinstance(exc, Exception))


def check_stop() -> None:
    """Raises :class:`Terminated` where a SIGTERM arrived in the open :func:`stop_on_sigterm` scope and
    something took the exception its handler raised for an error of its own and went on (a read that
    failed for it, taken for a damaged file). Called where work goes on to its next piece (a training
    step, a video): the stop comes there, not when the work is done."""
    if _sigterm["received"]:
        raise Terminated()


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
                os.environ.pop(LAUNCHED_HERE, None)  # nothing reads its folder now: the stop's line goes to stderr
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(grace)
                say(f"still running {grace:g} s after SIGTERM; killing this worker")
                os.kill(os.getpid(), signal.SIGKILL)
                return

    threading.Thread(target=watch, name="stop-with-launcher", daemon=True).start()


def launch_command(num_processes: int, module: list[str], mixed_precision: str, port: int) -> list[str]:
    """The arguments of ``accelerate launch`` running ``python -m MODULE...`` in ``num_processes`` processes on
    this machine."""
    # Every value the launcher would otherwise take from a config file or a default (with a warning).
    # All GPUs: a default config of `accelerate config` for one GPU (gpu_ids '0') would refuse --multi_gpu.
    return ["--multi_gpu", "--num_processes", str(num_processes), "--gpu_ids", "all", "--num_machines", "1",
            "--mixed_precision", mixed_precision, "--dynamo_backend", "no", "--main_process_port", str(port),
            "-m", *module]


# The launcher's loggers: each worker's failure, and each signal it passes on, as a line of its own.
LAUNCHER_LOGGERS = ("torch.distributed.run", "torch.distributed.launcher", "torch.distributed.elastic")


def launch_here(num_processes: int, module: list[str], mixed_precision: str) -> int:
    """Runs :func:`launch_command`'s ``accelerate launch`` in this process: DDP over this machine's GPUs, one
    process each (over gloo on the CPU where there is no GPU); returns the exit status.

    Ctrl-C, a scheduler's SIGTERM or a closed terminal reach the launcher as they reach an
    ``accelerate launch`` typed by hand: it passes them to its workers (each in its own session)
    and waits for them. The workers' last lines are said here, as one process would say them
    (:func:`say_last`); the launcher's report (a traceback, a table of failures, a line per signal
    passed on) is left out.

    Returns:
        0; the exit status of the worker that failed first (2 for a user error); 128 + the signal
        that stopped the launcher (130 after Ctrl-C, 143 after SIGTERM), what a shell reports.
    """
    import logging
    import shutil
    import socket
    import tempfile

    from accelerate.commands.launch import launch_command as accelerate_launch
    from accelerate.commands.launch import launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    import torch.distributed.run  # noqa: F401  (creates the launcher's loggers, quieted below)

    # A free port, not accelerate's fixed default (29500): two runs on one machine must not meet.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = launch_command_parser().parse_args(launch_command(num_processes, module, mixed_precision, port))
    # LOGLEVEL is torch.distributed.elastic's own switch: set, its lines are what was asked for.
    quiet = [] if "LOGLEVEL" in os.environ else [
        logger for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and name.startswith(LAUNCHER_LOGGERS)]
    levels = [logger.level for logger in quiet]
    # The launcher handles these signals while its workers run, and does not put the handlers back.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    sys.stdout.flush()
    sys.stderr.flush()
    folder = tempfile.mkdtemp(prefix="vidmusician-launch-")
    os.environ[LAUNCHED_HERE] = folder  # the workers take this process's environment
    signalled = False
    try:
        for logger in quiet:
            logger.setLevel(logging.CRITICAL + 1)
        accelerate_launch(args)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        # A worker a signal ended has a negative exit code, as in subprocess.
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    except SignalException as exc:  # the launcher passed it on to the workers and waited for them
        signalled = True
        return 128 + exc.sigval
    finally:
        os.environ.pop(LAUNCHED_HERE, None)
        try:
            _say_last_lines(folder, signalled)
        finally:  # also where stderr is gone
            shutil.rmtree(folder, ignore_errors=True)
            for logger, level in zip(quiet, levels):
                logger.setLevel(level)
            for sig, handler in handlers.items():
                if handler is not None:  # None: not set from Python, nothing to put back
                    signal.signal(sig, handler)
    return 0
