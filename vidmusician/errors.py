"""The project's exceptions.

Every error a user can cause derives from :class:`VidMusicianError`; its message
is one line that names the input and the fix. The CLI prints that line and exits
with status 2, never a traceback.
"""

import contextlib
import difflib
import errno
import os
import re
import sys
import warnings
from collections.abc import Callable


class VidMusicianError(Exception):
    """Base class of the errors a user can cause."""


class ConfigError(VidMusicianError, ValueError):
    """A configuration or argument is invalid."""


class VideoError(VidMusicianError):
    """A video file cannot be used (missing, unreadable, no video stream, ...)."""


class AudioError(VidMusicianError):
    """An audio file cannot be used."""


class AdapterError(VidMusicianError):
    """An adapter folder is missing, corrupt, or does not match the backbone."""


class BackboneError(VidMusicianError):
    """A backbone cannot be loaded or is not supported."""


class DataError(VidMusicianError):
    """A prepared dataset is missing or inconsistent."""


# What to do about a file-system failure, by errno: the user cannot act on "[Errno 28]".
_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free space or write elsewhere (earlier outputs were left intact)",
    errno.EDQUOT: "the disk quota is exceeded; free space or write elsewhere",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENAMETOOLONG: "the file name is too long for this file system; use a shorter name",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "this is a folder; give a file name",
    errno.EEXIST: "this already exists and is in the way",
    errno.ENOENT: "no such file or folder",
}

# decord's log prefix, "[12:34:56] /src/video/video_reader.cc:83: ": where in decord's C++, not what.
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def one_line(exc: BaseException, limit: int = 200) -> str:
    """One line for an exception: to print as the error, or to quote inside a project message.

    - A project error: its own message (one line by design), also when a DataLoader
      worker re-raised it inside torch's traceback text.
    - A file-system failure (``OSError`` with a path or an errno): the path and what
      to do ("disk is full; free space ..."), or what the system said.
    - Anything else (a library's error): its reason, without the errno and file name
      PyAV adds (``strerror``), the traceback decord or torch put before it, or
      decord's log prefix; the first line, whitespace collapsed, cut between words to
      at most ``limit`` characters (:func:`shorten`); the exception's type name when it
      says nothing.

    Args:
        exc: The exception.
        limit: Longest quoted reason of a library error (project messages are never cut).

    Returns:
        A line without newlines.
    """
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith(("Caught ", "Traceback ")):
        # torch's ExceptionWrapper ("Caught DataError in DataLoader worker process 0.")
        # and decord's FFI errors put the traceback first and "Type: message" last.
        lines = [lines[-1].split(": ", 1)[-1]]
    if isinstance(exc, VidMusicianError):
        return printable(" ".join(lines))
    if isinstance(exc, OSError) and (exc.errno in _OS_FIXES or exc.filename is not None):
        path = short_path(exc.filename) if exc.filename is not None else ""
        what = _OS_FIXES.get(exc.errno, exc.strerror or type(exc).__name__)
        return printable(f"{path}: {what}" if path else what)
    reason = getattr(exc, "strerror", None) or (lines[0] if lines else "")
    reason = " ".join(_DECORD_PREFIX.sub("", reason).split())
    return printable(shorten(reason, limit) or type(exc).__name__)


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters where it can be, cut only between words.

    Whole words are kept up to the limit and `` ...`` marks the cut. A word is never cut
    in two (the start of a word can read as another word): a first word longer than the
    limit is kept whole.
    """
    if len(text) <= limit:
        return text
    words = text.split(" ")
    kept = words[0]
    for word in words[1:]:
        if len(kept) + len(word) + len(" ") + len(" ...") > limit:
            break
        kept += " " + word
    return kept if kept == text else kept + " ..."


def did_you_mean(word, choices) -> str:
    """`` (did you mean X?)`` for the one of ``choices`` closest to a mistyped ``word``, or '' when none is close.

    Args:
        word: What the user typed (a key, a name).
        choices: The names it may have meant.

    Returns:
        The hint, with a leading space, to put after the name in a message.
    """
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_keys(what: str, keys, known, named: bool = True) -> str:
    """``unknown recipe key max_step (did you mean max_steps?)``: keys no field has, each with its closest field.

    Every known field is listed only when some key is close to none of them (that list is long).

    Args:
        what: What the keys are ('recipe', 'adapter config').
        keys: The unknown keys, in message order.
        known: The fields there are.
        named: Whether to name the keys (False: the message's source names the one key already).
    """
    keys, known = list(keys), sorted(known)
    hints = [did_you_mean(key, known) for key in keys]
    listed = "" if all(hints) else f"; known: {', '.join(known)}"
    if not named:
        return f"unknown {what} key{''.join(hints)}{listed}"
    return f"unknown {what} key{'s' if len(keys) > 1 else ''} " \
           f"{', '.join(key + hint for key, hint in zip(keys, hints))}{listed}"


def short_path(path, limit: int = 120) -> str:
    """A path for a message: long ones (a 300-character name) keep their start and end."""
    text = printable(os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path))
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-(limit // 3):]}"


def printable(text) -> str:
    """Text that any output and any JSON reader takes: a file name's bytes that are not UTF-8 as ``\\xNN``.

    Python hands such bytes over as lone surrogates (``os.fsdecode``'s
    surrogateescape: ``b"caf\\xe9.mp4"`` is ``"caf\\udce9.mp4"``), which a UTF-8
    terminal, log file or strict JSON parser refuses. They are shown as the
    ``\\xNN`` a shell's ``ls -b`` prints; valid text (every UTF-8 name) is unchanged,
    so messages and the records built from names stay the same from run to run.

    Args:
        text: A string, or a path (``str``, ``bytes`` or ``os.PathLike``).

    Returns:
        The text, valid UTF-8.
    """
    if not isinstance(text, str):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the name's own bytes back
    except UnicodeEncodeError:  # a surrogate that no byte stands for (not from a file name)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def differing_fields(mine, theirs, fields=None, sides: tuple[str, str] = ("", "")) -> str:
    """The fields where two records differ, as one line for a message: ``dim: adapter 32 vs backbone 64; ...``.

    Args:
        mine: A dataclass, a dict, or any object with the fields as attributes.
        theirs: The same for the other side.
        fields: The names to compare, in message order; default: every field of
            ``mine`` (a dataclass's fields, a dict's keys).
        sides: Words for the two sides ('adapter', 'backbone'); empty: the values alone.

    Returns:
        The differing fields joined with '; ', or '' when they all agree.
    """
    import dataclasses

    def value(record, name):
        return record[name] if isinstance(record, dict) else getattr(record, name)

    if fields is None:
        fields = [f.name for f in dataclasses.fields(mine)] if dataclasses.is_dataclass(mine) else list(mine)
    a, b = (f"{side} " if side else "" for side in sides)
    return "; ".join(f"{name}: {a}{value(mine, name)} vs {b}{value(theirs, name)}"
                     for name in fields if value(mine, name) != value(theirs, name))


@contextlib.contextmanager
def warnings_as_lines(program: str, shown: Callable[[], bool] | None = None):
    """Shows the warnings raised inside as one line each, ``PROGRAM: warning: ...``.

    Python's default display adds the file, line and source of the code that warned, which
    tells a user of the command line nothing.

    Args:
        program: What starts each line (``vidmusician generate``).
        shown: Whether to show them at all, asked at each warning (process 0 of a launch alone:
            every process would repeat it); default: always.
    """

    def show(message, category, filename, lineno, file=None, line=None):
        if shown is None or shown():
            print(f"{program}: warning: {printable(str(message))}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
