"""The `vidmusician` subcommands (see :mod:`vidmusician.cli`)."""

from __future__ import annotations

from ...errors import warnings_as_lines


def one_line_warnings(command: str):
    """Shows the warnings raised inside as one line each, ``vidmusician COMMAND: warning: ...``
    (:func:`~vidmusician.errors.warnings_as_lines`)."""
    return warnings_as_lines(f"vidmusician {command}")
