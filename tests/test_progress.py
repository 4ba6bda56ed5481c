"""Progress bars: redrawn on a terminal; in a file or a pipe, each bar's final state once."""

from __future__ import annotations

import io
import sys
import types

from tqdm.std import tqdm as text_bar
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


class WidgetBar(text_bar):
    """Draws its own way, as tqdm.notebook's bar (what tqdm.auto is in Jupyter or Colab) does."""

    def __init__(self, *args, **kwargs):
        self.drawn = []
        super().__init__(*args, **kwargs)
        self.display(check_delay=False)  # as tqdm.notebook's __init__ does

    def display(self, msg=None, pos=None, close=False, bar_style=None, check_delay=True):
        self.drawn.append(self.n)  # a widget's state, drawn in the page
        return True


def test_a_bar_that_draws_its_own_way_is_used_as_is(monkeypatch):
    # A notebook's stderr says isatty() False: still the notebook's widget, not the log's bar.
    monkeypatch.setattr("tqdm.auto.tqdm", WidgetBar)
    file = io.StringIO()
    bar = progress_bar(total=3, desc="work", file=file, mininterval=0)
    bar.update(3)
    bar.close()
    assert type(bar) is WidgetBar and bar.drawn[-1] == 3, (type(bar).__mro__, bar.drawn)
    items = progress_bar(range(4), file=file, mininterval=0)
    assert list(items) == [0, 1, 2, 3] and type(items) is WidgetBar


def test_the_log_bar_takes_tqdms_keyword_arguments():
    file = io.StringIO()
    bar = progress_bar(total=3, desc="work", file=file, mininterval=0)
    assert bar.display(check_delay=False) is False
    bar.clear(nolock=True)
    bar.refresh(nolock=True)
    bar.update(3)
    bar.close()
    assert file.getvalue().startswith("work: 100%") and file.getvalue().count("\n") == 1, repr(file.getvalue())


def test_a_notebook_cell_without_widgets_gets_the_bar_redrawn(monkeypatch):
    # Without ipywidgets tqdm.auto is the text bar; a Jupyter cell overwrites the line on "\r".
    class OutStream(io.StringIO):
        def isatty(self):
            return False  # as ipykernel's streams say

    iostream = types.ModuleType("ipykernel.iostream")
    iostream.OutStream = OutStream
    monkeypatch.setitem(sys.modules, "ipykernel.iostream", iostream)
    out = run_bar(OutStream())
    assert out.count("\r") > 2 and "50/50" in out, repr(out)
    assert run_bar(io.StringIO()).count("\r") == 0  # other files keep the log's bar
