"""The suite's own guard (tests/leftovers.py, pytest-timeout): a test that leaves processes running, or
that hangs, ends; what it started does not run on and take the rest of the suite's cores."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from leftovers import stat

TESTS = Path(__file__).resolve().parent

# Tests of a run started here: each starts a process that would run for minutes and writes its pid.
CASES = '''
import os, subprocess, sys, time

import pytest

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]

@pytest.fixture(scope="module")
def server():  # never stopped
    proc = subprocess.Popen(SLEEPER)
    open(os.environ["PIDS"] + "/fixture", "w").write(str(proc.pid))
    return proc

def test_child_left(tmp_path_factory):
    proc = subprocess.Popen(SLEEPER)
    open(os.environ["PIDS"] + "/child", "w").write(str(proc.pid))

def test_orphan_left(server):
    # the way accelerate's workers outlive a launcher killed with SIGKILL: no parent here, a session of their own
    out = subprocess.run(["setsid", "sh", "-c", '"$0" -c "import time; time.sleep(300)" >/dev/null 2>&1 & echo $!',
                          sys.executable], capture_output=True, text=True, check=True).stdout
    open(os.environ["PIDS"] + "/orphan", "w").write(out.strip())

def test_hangs():
    proc = subprocess.Popen(SLEEPER)
    open(os.environ["PIDS"] + "/hung", "w").write(str(proc.pid))
    proc.wait()
'''


def running(pid: int) -> bool:
    fields = stat(pid)
    return fields is not None and fields[0] != "Z"


# The hung test's process exits 3 s after its processes are killed, so that the test, whose wait the kill
# ends, reports before the exit: the race that would otherwise show the test as passed, every time.
SLOW_EXIT = '''
import os, time
import leftovers

class SlowExit:
    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def _exit(code):
        time.sleep(3)
        os._exit(code)

leftovers.os = SlowExit()
'''


@pytest.fixture
def run_cases(tmp_path):
    """Runs CASES with pytest's arguments; returns its output and the pids its tests wrote. Any of them that
    still runs after the test (its assertions failed) is killed."""
    started: list[int] = []
    yield lambda *args, conftest="": _run_cases(tmp_path, started, *args, conftest=conftest)
    for pid in started:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def _run_cases(tmp_path: Path, started: list[int], *args: str, conftest: str = ""):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "conftest.py").write_text('pytest_plugins = ["leftovers"]\n' + conftest)
    (tmp_path / "t" / "test_cases.py").write_text(CASES)
    (tmp_path / "pids").mkdir()
    env = dict(os.environ, PYTHONPATH=str(TESTS), PIDS=str(tmp_path / "pids"))
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-c", os.devnull,
                          "--rootdir", str(tmp_path / "t"), *args, str(tmp_path / "t")],
                         capture_output=True, text=True, env=env, timeout=120)
    pids = {p.name: int(p.read_text()) for p in (tmp_path / "pids").iterdir()}
    started += pids.values()
    deadline = time.monotonic() + 10  # the kill is done; init reaps what it was handed
    while any(running(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return out, pids


def test_what_a_test_leaves_running_is_killed_at_its_end_and_named(run_cases):
    out, pids = run_cases("-k", "left")
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(pids) == ["child", "fixture", "orphan"]
    assert not any(running(pid) for pid in pids.values()), out.stdout
    for name in ("test_child_left", "test_orphan_left"):  # not the fixture's, in use after the test
        assert f"test_cases.py::{name} left 1 processes running; killed: " in out.stdout, out.stdout


def test_a_hung_test_ends_its_worker_and_what_it_started(run_cases):
    """pytest-timeout's thread method ends the xdist worker of a test over its limit; the run goes on to its
    end (here the other worker's tests) and ends what the hung test started."""
    out, pids = run_cases("-n", "2", "--timeout", "10", "--timeout-method", "thread")
    assert out.returncode == 1, out.stdout + out.stderr
    # Failed by the worker's end ("crashed while running"), by its own report where the kill let its wait end
    # first (the race test_a_hung_test_whose_wait_the_kill_ends_is_no_pass makes certain), or both, when the
    # exit comes during its teardown; no other test failed.
    failed = re.findall(r"^FAILED \S*test_cases.py::(\w+)", out.stdout, re.M)
    assert failed and set(failed) == {"test_hangs"}, out.stdout
    # where it was stuck, on stderr (the worker's stdout reaches nobody)
    assert "test_cases.py::test_hangs: over its time limit of 10 s" in out.stderr, out.stderr
    assert "in test_hangs\n    proc.wait()" in out.stderr, out.stderr
    assert " 2 passed" in out.stdout, out.stdout
    assert sorted(pids) == ["child", "fixture", "hung", "orphan"]
    assert not any(running(pid) for pid in pids.values()), out.stdout


def test_without_xdist_a_hung_test_ends_the_run_and_what_it_started(run_cases):
    out, pids = run_cases("-k", "hangs", "--timeout", "5", "--timeout-method", "thread")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "test_cases.py::test_hangs: over its time limit of 5 s" in out.stderr, out.stderr
    assert "~~~ killed the processes it left: " in out.stderr, out.stderr
    assert list(pids) == ["hung"] and not running(pids["hung"]), out.stderr


def test_a_hung_test_whose_wait_the_kill_ends_is_no_pass(run_cases):
    out, _ = run_cases("-k", "hangs", "-n", "1", "--timeout", "5", "--timeout-method", "thread",
                       conftest=SLOW_EXIT)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 failed" in out.stdout and "\nover its time limit of 5 s (see the stacks on stderr)\n" in out.stdout, \
        out.stdout
