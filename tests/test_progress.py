"""Progress bars: redrawn on a terminal; in a file or a pipe, each bar's final state once."""

from __future__ import annotations

import io

from tqdm.auto import tqdm

from vidmusician.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run_bar(file, steps=50, delay=0.0, write=None):
    bar = progress_bar(total=steps, desc="work", unit="step", delay=delay, file=file, mininterval=0)
    for i in range(steps):
        bar.update(1)
        if write is not None and i == steps // 2:
            tqdm.write(write, file=file)
    bar.close()
    return file.getvalue()


def test_a_log_gets_the_final_state_once():
    out = run_bar(io.StringIO())
    assert "\r" not in out and out.count("\n") == 1, repr(out)
    assert out.startswith("work: 100%") and "50/50" in out
    file = io.StringIO()
    assert list(progress_bar(range(5), desc="items", file=file, mininterval=0)) == list(range(5))
    assert file.getvalue().startswith("items: 100%") and file.getvalue().count("\n") == 1, repr(file.getvalue())


def test_lines_written_meanwhile_stay_clean_in_a_log():
    out = run_bar(io.StringIO(), write="a log line")
    assert out.splitlines() == ["a log line", out.splitlines()[1]] and "50/50" in out.splitlines()[1], repr(out)
    assert "\r" not in out and "  \n" not in out


def test_a_bar_that_ends_within_its_delay_shows_nothing():
    assert run_bar(io.StringIO(), delay=60.0) == ""
    assert run_bar(Terminal(), delay=60.0) == ""


def test_a_terminal_gets_the_bar_redrawn():
    out = run_bar(Terminal())
    assert out.count("\r") > 2 and "50/50" in out


def test_a_disabled_bar_writes_nothing():
    file = io.StringIO()
    bar = progress_bar(range(3), enabled=False, file=file)
    assert list(bar) == [0, 1, 2] and file.getvalue() == ""
