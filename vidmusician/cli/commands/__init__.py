"""The `vidmusician` subcommands (see :mod:`vidmusician.cli`)."""

from __future__ import annotations

import contextlib
import sys
import warnings

from ...errors import printable


@contextlib.contextmanager
def one_line_warnings(command: str):
    """Shows the warnings raised inside as one line each, ``vidmusician COMMAND: warning: ...``.

    Python's default display adds the file, line and source of the code that
    warned, which tells a user of the command line nothing.
    """

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"vidmusician {command}: warning: {printable(str(message))}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
