"""Checks of user-given numbers and shapes, at the boundary (CLI, recipe, adapter config).

Each check raises :class:`~vidmusician.errors.ConfigError` with one line that
names the input, the value and the range it must be in, so that a bad number
never reaches the code that would divide by it or allocate with it.
"""

from __future__ import annotations

import math
import numbers

from .errors import ConfigError

# Upper bound of counts (steps, batch sizes, widths): what fits a 32-bit index, and
# far beyond anything meant; larger values are typos that would only fail later.
MAX_COUNT = 2**31 - 1

# Classifier-free guidance coefficients (text, video, both) take [0, MAX_GUIDANCE]: 0 leaves
# a condition out, 1 is the conditional model alone, above 1 it is amplified (MusicGen's
# default is 3). A negative one would steer the music away from its text or video, which
# is far likelier a typo than a wish: refused, as is anything past 10, over three times the
# default (the logits' differences times 1e300 are infinite and sampling fails).
MAX_GUIDANCE = 10.0


def number(name: str, value, *, integer: bool = False, low: float | None = None, high: float | None = None,
           low_open: bool = False, source: str = "") -> float | int:
    """Checks that ``value`` is a finite number in range and returns it.

    Args:
        name: What the value is, as the user wrote it (``batch_size``, ``--duration``).
        value: The value.
        integer: Require a whole number (booleans are refused).
        low, high: Bounds, inclusive; ``low_open`` makes ``low`` exclusive.
        source: The file or command the value comes from, for the message.

    Raises:
        ConfigError: One line naming the input, its value and the range.
    """
    where = f"{source}: " if source else ""
    kind = "a whole number" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{where}{name} must be {kind}{describe(low, high, low_open)}, got {value!r}")
    if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
            high is not None and value > high):
        raise ConfigError(f"{where}{name} must be {kind}{describe(low, high, low_open)}, got {value!r}")
    return value


def guidance(name: str, value) -> float:
    """Checks a guidance coefficient: a number in ``[0, MAX_GUIDANCE]`` (see :data:`MAX_GUIDANCE`).

    Raises:
        ConfigError: One line naming the coefficient, its value and the range.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)  # numpy and torch scalars too
    number(name, value, low=0.0, high=MAX_GUIDANCE)
    return value


def describe(low, high, low_open: bool = False) -> str:
    """' in [a, b]', ' > a', ' >= a', or ''."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{_show(low)}, {_show(high)}]"
    if low is not None:
        return f" {'>' if low_open else '>='} {_show(low)}"
    if high is not None:
        return f" <= {_show(high)}"
    return ""


def _show(bound) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def arg_number(integer: bool = False, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse ``type=`` that parses and range-checks a number (argparse prints the message)."""
    import argparse

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if integer else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be{describe(low, high, low_open)}, got {text}")
        return value

    return parse


def json_object(data, source: str) -> dict:
    """Checks that a parsed JSON document is an object (a recipe, a config)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object {{\"key\": value, ...}}, got a {type(data).__name__}")
    return data
