"""Processes a test leaves running are killed when it ends; those the whole run leaves, when it ends.

A test that fails while its command runs (a timeout, a launcher killed) can leave the
command's children behind: a trainer's workers, a Chromium, a server. Left running they
take the cores the rest of the suite needs (two on the CI machine), hold ports, and keep
a CI job waiting for them. Workers started by ``accelerate launch`` run in sessions of
their own, so a process group does not find them; their environment does. Every process
a test starts inherits two variables: the run's mark, and the mark of the test (or of the
fixtures being set up) in this pytest process. After a test's teardown, the processes its
body started that still run are killed and named in a warning. At the end of the run,
every process still carrying the marks is killed (a fixture's).

A test over its limit (pytest-timeout's ``timeout``, with ``timeout_method = thread``) is
ended here: its stacks and its output so far go to the run's stderr (an xdist worker's
stdout reaches nobody), its processes are killed, and its pytest process exits; xdist
reports it as crashed and starts another worker for the tests still to run.

Linux only (``/proc``); elsewhere nothing is swept. A test that starts a command with an
environment of its own, not built on ``os.environ``, is not tracked.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from typing import Callable

import pytest

RUN = "VIDMUSICIAN_TEST_RUN"  # the whole run: set by the process pytest was started as, kept by xdist's workers
ITEM = "VIDMUSICIAN_TEST_ITEM"  # "<this pytest process>:<test number>", or ":fixtures" while fixtures are set up


class LeftProcesses(pytest.PytestWarning):
    """A test ended with processes it started still running."""


def _process_name() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def marked(take: Callable[[str], bool]) -> list[int]:
    """The pids of this run's processes (not this one) whose ITEM mark ``take`` accepts."""
    run = os.environ.get(RUN, "").encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(var.partition(b"=")[::2] for var in f.read().split(b"\0") if var)
        except OSError:  # gone, or another user's
            continue
        item = env.get(ITEM.encode())
        if env.get(RUN.encode()) == run and item is not None and take(item.decode(errors="replace")):
            found.append(int(entry))
    return found


def stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command's name (state first, nice at 16); None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return str(pid)
    return f"{pid} ({b' '.join(words).decode(errors='replace').strip()[:160]})"


def kill(pids: list[int]) -> list[str]:
    """SIGKILLs ``pids``; what each was, for the report (read before the kill)."""
    names = [describe(pid) for pid in pids]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return names


def sweep(take: Callable[[str], bool], settle: float = 0.0) -> list[str]:
    """Kills the marked processes ``take`` accepts; with ``settle``, first gives ones that are stopping that
    many seconds to end on their own (a server that was sent SIGTERM, workers following their launcher)."""
    pids = marked(take)
    deadline = time.monotonic() + settle
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = marked(take)
    return kill(pids)


_numbers = itertools.count()
_MARK = pytest.StashKey[str]()
_TIMER = pytest.StashKey[threading.Timer]()
_over: dict[str, float] = {}  # the test over its limit, and the limit
# pytest's and xdist's own frames, left out of the stacks: a test hangs in its code or in what it calls.
_RUNNER = ("/_pytest/", "/pluggy/", "/execnet/", "/xdist/")


def _controller(config) -> bool:
    """Whether this process hands the tests to xdist's workers and runs none itself."""
    return not hasattr(config, "workerinput") and (getattr(config.option, "numprocesses", None) or 0) > 0


def pytest_configure(config):
    if ITEM in os.environ or RUN not in os.environ:  # a run of its own (one started by a test is too)
        os.environ[RUN] = f"{os.getpid()}-{time.time_ns()}"
    if _controller(config):  # xdist's workers take this environment: no ITEM there, so they keep RUN
        os.environ.pop(ITEM, None)
    else:
        os.environ[ITEM] = f"{_process_name()}:fixtures"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    mark = f"{_process_name()}:{next(_numbers)}"
    item.stash[_MARK] = mark
    os.environ[ITEM] = mark
    yield
    os.environ[ITEM] = f"{_process_name()}:fixtures"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield
    mark = item.stash.get(_MARK, None)
    if mark is None:
        return
    left = sweep(lambda m: m == mark, settle=2.0)
    if left:
        warnings.warn(LeftProcesses(f"{item.nodeid} left {len(left)} processes running; killed: {'; '.join(left)}"))


def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: its own
        prefix = f"{_process_name()}:"
        sweep(lambda m: m.startswith(prefix))
    else:  # the run's end: every one left (by a worker that crashed, say)
        sweep(lambda m: True)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout's thread method, with the report on stderr and the test's processes ended."""
    if settings.method != "thread":
        return None
    timer = threading.Timer(settings.timeout, _over_limit, (item, settings.timeout))
    timer.name, timer.daemon = f"time limit of {item.nodeid}", True
    item.stash[_TIMER] = timer
    timer.start()
    return True


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item):
    timer = item.stash.get(_TIMER, None)
    if timer is None:
        return None
    timer.cancel()
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    limit = _over.pop(item.nodeid, None)
    if limit is not None:  # the phase whose wait ended when its processes were killed: not a pass
        report = outcome.get_result()
        report.outcome, report.longrepr = "failed", f"over its time limit of {limit:g} s (see the stacks on stderr)"


def _over_limit(item, limit: float) -> None:
    _over[item.nodeid] = limit  # before the kill below lets the test's main thread go on
    try:
        capman = item.config.pluginmanager.getplugin("capturemanager")
        out = err = ""
        if capman:
            capman.suspend_global_capture(item)  # fd 2 is the run's stderr again
            out, err = capman.read_global_capture()
        lines = [f"\n+++ {item.nodeid}: over its time limit of {limit:g} s; its pytest process ends here +++"]
        for name, text in (("stdout", out), ("stderr", err)):
            if text:
                lines += [f"~~~ its {name} so far (the end) ~~~", text[-4000:]]
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            stack = [f for f in traceback.extract_stack(frame) if not any(part in f.filename for part in _RUNNER)]
            if ident != threading.get_ident() and stack:
                lines += [f"~~~ stack of thread {names.get(ident, ident)} ~~~", "".join(traceback.format_list(stack))]
        prefix = f"{_process_name()}:"
        left = kill(marked(lambda m: m.startswith(prefix)))
        if left:
            lines.append(f"~~~ killed the processes it left: {'; '.join(left)} ~~~")
        os.write(2, "\n".join(lines).encode(errors="replace") + b"\n")
    finally:
        os._exit(1)

