"""Progress bars that suit where they are written: redrawn on a terminal, one final line in a log.

A terminal overwrites a bar in place; a file or a pipe (``2> log.txt``, ``nohup``, a CI log)
keeps every redraw as text, so a log showed a bar's states one after another. There a bar
writes nothing while it runs and its final state once, as one line, when it closes.

Only tqdm's text bar is concerned: a bar that draws its own way (the widget of
``tqdm.notebook``, which ``tqdm.auto`` picks in Jupyter or Colab) is used as it is.
"""

from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(iterable=None, *, total: int | None = None, desc: str | None = None, unit: str = "it",
                 enabled: bool = True, delay: float = 0.0, file=None, **kwargs):
    """A tqdm bar on ``file`` (default: stderr): redrawn on a terminal, its final line only elsewhere.

    Args:
        iterable: What the bar counts, as tqdm's first argument (None: call ``update``).
        total: The count at completion.
        desc: The bar's label.
        unit: What is counted.
        enabled: False: a bar that shows nothing (tqdm's ``disable``).
        delay: Seconds before the bar shows; a shorter task shows no bar (on a terminal
            or elsewhere).
        file: Where to write; None: ``sys.stderr`` as it is now.
        **kwargs: Further tqdm arguments (``initial``, ``dynamic_ncols``, ...).

    Returns:
        The bar: a ``tqdm.auto.tqdm`` (so the demo's ``gr.Progress(track_tqdm=True)`` sees it).
        In a notebook with ipywidgets that is tqdm's widget bar, whatever ``file`` is.
    """
    from tqdm.auto import tqdm

    file = sys.stderr if file is None else file
    kind = _log_bar_class(tqdm) if _draws_text(tqdm) and not _redraws(file) else tqdm
    return kind(iterable, total=total, desc=desc, unit=unit, disable=not enabled, delay=delay, file=file,
                **kwargs)


def _draws_text(tqdm) -> bool:
    """Whether ``tqdm`` draws tqdm's text bar on its file (a notebook's widget bar does not)."""
    from tqdm.std import tqdm as text_bar

    # tqdm.auto is tqdm.asyncio's class outside a notebook: a subclass that keeps the text display.
    return issubclass(tqdm, text_bar) and tqdm.display is text_bar.display


def _redraws(file) -> bool:
    """Whether ``file`` shows a carriage return as a redraw: a terminal, or a notebook cell's output."""
    isatty = getattr(file, "isatty", None)
    if callable(isatty) and isatty():
        return True
    # ipykernel's streams say isatty() False, yet Jupyter overwrites the line on "\r"; tqdm.auto
    # gives the text bar there when ipywidgets is missing. Looked up, not imported: a kernel has it.
    kernel_streams = sys.modules.get("ipykernel.iostream")
    return kernel_streams is not None and isinstance(file, kernel_streams.OutStream)


_LOG_BARS: dict = {}


def _log_bar_class(tqdm):
    """The bar for a file or a pipe, made on first use from the text tqdm class (the demo's is patched)."""
    if tqdm not in _LOG_BARS:

        class LogBar(tqdm):
            """No redraws while running; the final state as one line (no carriage return) when closed."""

            def __init__(self, *args, delay: float = 0.0, **kwargs):
                # tqdm's own delay would also skip the final line of a bar that never drew:
                # here nothing draws before the end, so the delay is kept and checked at close.
                self._show_after = delay
                super().__init__(*args, delay=0.0, **kwargs)

            def display(self, msg=None, pos=None, **kwargs):
                return False  # a redraw would stay in the log as one more line

            def clear(self, nolock=False, **kwargs):
                pass  # tqdm.write clears the bars around its line: nothing is drawn to clear

            def close(self):
                final = None
                if not self.disable and self._time() - self.start_t >= self._show_after:
                    self._ema_dt = lambda: None  # the overall rate, as tqdm's own final line shows
                    final = self.__str__()
                self.leave = False  # tqdm's close then only clears the bar, a no-op here
                super().close()
                if final is not None:
                    self.fp.write(final + "\n")
                    self.fp.flush()

        _LOG_BARS[tqdm] = LogBar
    return _LOG_BARS[tqdm]
