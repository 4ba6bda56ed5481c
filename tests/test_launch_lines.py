"""`vidmusician train --num-processes N`: the processes' last lines, said as one process would.

Each process of the launch leaves its last line (a user error, or the signal that stopped it) in a
folder of the launch (:func:`vidmusician.training.launch.say_last`); the launcher says each different
error once and the first process's stop line. A launcher typed by hand leaves each process its own.
"""

from __future__ import annotations

import os
import signal

import pytest

from vidmusician import cli


@pytest.mark.parametrize("launched_here", [True, False])
@pytest.mark.parametrize("rank", ["0", "1"])
@pytest.mark.parametrize("stop, status, line", [(KeyboardInterrupt, 130, "vidmusician train: interrupted"),
                                                ("Terminated", 143, "vidmusician train: stopped by SIGTERM")])
def test_a_process_of_num_processes_leaves_its_last_line_to_the_launcher(launched_here, rank, stop, status, line,
                                                                         tmp_path, monkeypatch, capsys):
    """A signal that arrives while the processes start reaches the CLI's own handler. Under `--num-processes`
    each process leaves its line to the launcher, which says it once; under a launcher typed by hand a
    signal may reach one process alone (one machine of several stopped), and each says its own.
    Every process ends with the signal's status."""
    from vidmusician.training.launch import LAUNCHED_HERE, Terminated

    stop = Terminated if stop == "Terminated" else stop

    def stopped(*args, **kwargs):
        raise stop()

    monkeypatch.setenv("RANK", rank)
    if launched_here:
        monkeypatch.setenv(LAUNCHED_HERE, str(tmp_path))
    else:
        monkeypatch.delenv(LAUNCHED_HERE, raising=False)
    monkeypatch.setattr("vidmusician.cli.commands.train.run", stopped)
    assert cli.main(["train", "--recipe", "r.json", "--data", "d", "--output", "o"]) == status
    assert capsys.readouterr().err == ("" if launched_here else f"{line}\n")
    assert [p.name for p in tmp_path.iterdir()] == ([f"{rank}.stop"] if launched_here else [])
    if launched_here:
        assert (tmp_path / f"{rank}.stop").read_text() == f"{line}\n"


def test_the_processes_of_num_processes_know_they_were_launched_here(monkeypatch):
    """launch_here marks its workers' environment with a folder of the launch (what say_last reads), there only
    while they run."""
    from vidmusician.training.launch import LAUNCHED_HERE, launch_here

    seen = []
    monkeypatch.delenv(LAUNCHED_HERE, raising=False)
    monkeypatch.setattr("accelerate.commands.launch.launch_command",
                        lambda args: seen.append((os.environ.get(LAUNCHED_HERE), os.path.isdir(os.environ[LAUNCHED_HERE]))))
    assert launch_here(2, ["vidmusician", "train", "--help"], "no") == 0
    assert len(seen) == 1 and seen[0][1] and LAUNCHED_HERE not in os.environ and not os.path.exists(seen[0][0])


@pytest.mark.parametrize("end, left, said", [
    # A user error every process meets (and one only process 1 met); process 0 stopped by the launcher after.
    ("failed", {1: [("error", "same"), ("error", "only 1")], 0: [("error", "same")]}, ["error: same", "error: only 1"]),
    ("failed", {1: [("error", "same")], 0: [("stop", "stopped by SIGTERM")]}, ["error: same"]),
    ("failed", {1: [("error", "b")], 0: [("error", "a")]}, ["error: a", "error: b"]),  # in the processes' order
    # Ctrl-C while the launcher stops the others after an error: the error, and the stop.
    ("signal", {1: [("error", "same")], 0: [("stop", "interrupted at step 3")]},
     ["error: same", "interrupted at step 3"]),
    ("signal", {1: [("error", "same\x1cstill one line")]}, ["error: same\x1cstill one line"]),
    # One process stopped alone (a SIGTERM to its pid), the other by the launcher after it.
    ("failed", {1: [("stop", "stopped by SIGTERM")], 0: [("stop", "interrupted at step 3")]},
     ["interrupted at step 3"]),
    # A signal to the command: every process stopped, at steps of their own.
    ("signal", {0: [("stop", "interrupted at step 7")], 1: [("stop", "stopped by SIGTERM")]},
     ["interrupted at step 7"]),
    ("signal", {1: [("stop", "stopped by SIGTERM")]}, ["stopped by SIGTERM"]),
])
def test_num_processes_says_the_last_lines_as_one_process_would(end, left, said, monkeypatch, capsys):
    """Each different user error once, in the order of the processes; else the first process's stop line:
    not a line per process, and not the launcher's stop of the others after one failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from vidmusician.training.launch import launch_here, say_last

    def launch(args):
        for rank, lines in left.items():
            monkeypatch.setenv("RANK", str(rank))
            for kind, line in lines:
                say_last(f"vidmusician train: {line}" if kind == "stop" else f"vidmusician train: error: {line}",
                         stop=kind == "stop")
        monkeypatch.delenv("RANK")
        assert capsys.readouterr().err == ""  # nothing from the processes themselves
        if end == "signal":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's handler, left in place
            raise SignalException("got SIGTERM", sigval=signal.SIGTERM)
        raise ChildFailedError("vidmusician", {1: ProcessFailure(1, 101, 2, "<N/A>")})

    monkeypatch.setattr("accelerate.commands.launch.launch_command", launch)
    assert launch_here(2, ["vidmusician", "train"], "no") in (2, 143)
    assert capsys.readouterr().err == "".join(f"vidmusician train: {line}\n" for line in said)


def test_a_last_line_that_cannot_be_left_for_the_launcher_is_said_here(tmp_path, monkeypatch, capsys):
    """A full disk, or the launcher's folder gone (the launcher killed): the line goes to stderr, not lost."""
    from vidmusician.training.launch import LAUNCHED_HERE, say_last

    monkeypatch.setenv("RANK", "1")
    (tmp_path / "1.error").mkdir()  # where the line would go: not a file that can be written
    for folder in (tmp_path, tmp_path / "gone"):
        monkeypatch.setenv(LAUNCHED_HERE, str(folder))
        say_last("vidmusician train: error: x")
        assert capsys.readouterr().err == "vidmusician train: error: x\n"


def test_a_user_error_the_processes_meet_is_said_once_through_the_cli(monkeypatch, capsys):
    """The CLI's own error line (the name shown as the bytes it holds) reaches the launcher, once."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from vidmusician.errors import ConfigError
    from vidmusician.training.launch import launch_here

    def fails(args):
        raise ConfigError("caf\udce9: no such adapter folder")

    def launch(args):
        for rank in (1, 0):
            monkeypatch.setenv("RANK", str(rank))
            assert cli.main(["train", "--recipe", "r.json", "--data", "d", "--output", "o"]) == 2
        monkeypatch.delenv("RANK")
        assert capsys.readouterr().err == ""  # nothing from the processes themselves
        raise ChildFailedError("vidmusician", {0: ProcessFailure(0, 100, 2, "<N/A>")})

    monkeypatch.setattr("vidmusician.cli.commands.train.run", fails)
    monkeypatch.setattr("accelerate.commands.launch.launch_command", launch)
    assert launch_here(2, ["vidmusician", "train"], "no") == 2
    assert capsys.readouterr().err == "vidmusician train: error: caf\\xe9: no such adapter folder\n"
