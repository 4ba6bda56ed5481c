"""`vidmusician` command line: thin subcommands over the library.

Each subcommand lives in ``vidmusician/cli/commands/<name>.py`` and defines ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. User errors
(:class:`~vidmusician.errors.VidMusicianError`) print one line on stderr and exit
with status 2. SIGTERM (what ``kill``, schedulers and service managers send) unwinds
like Ctrl-C, so a file being written is removed, and exits with status 143.

Building the parser imports every subcommand module (only the one named, when a
subcommand is), so those import the library (torch, audiocraft) inside ``run``:
``vidmusician -h`` and a mistyped argument answer at once, and a subcommand that
needs no model (``info``) loads none.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..arguments import Parser
from ..errors import VidMusicianError, one_line
from ..training.launch import Terminated, say_last, stop_on_sigterm

COMMANDS = ("info", "features", "generate", "prepare", "train", "eval", "demo", "push")


def build_parser(commands=COMMANDS) -> argparse.ArgumentParser:
    """The ``vidmusician`` parser with the subcommands ``commands`` (default: all)."""
    parser = Parser(prog="vidmusician", description="Video-to-music generation with MusicGen adapters.")
    parser.add_argument("--version", action="version", version=f"vidmusician {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name in commands:
        try:
            module = importlib.import_module(f"vidmusician.cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vidmusician.cli.commands.{name}":
                raise
            continue  # subcommand not shipped in this build
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _named_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names, when it names a known one before any other word (else None)."""
    for arg in argv:
        if arg.startswith("-"):
            if arg in ("-h", "--help", "--version"):
                return None
            continue
        return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _named_command(argv)
    # Only the named subcommand's module: another's module-level imports cost this one nothing.
    parser = build_parser((command,) if command else COMMANDS)
    args = parser.parse_args(argv)
    try:
        with stop_on_sigterm():
            return int(args._run(args) or 0)
    except (VidMusicianError, OSError) as exc:  # OSError: the file system said no (full disk, read-only)
        say_last(f"vidmusician {args.command}: error: {one_line(exc)}")
        return 2
    except KeyboardInterrupt:
        say_last(f"vidmusician {args.command}: interrupted", stop=True)
        return 130
    except Terminated:  # (also an error a library made of the signal: stop_on_sigterm raises it as this)
        say_last(f"vidmusician {args.command}: stopped by SIGTERM", stop=True)
        return 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


if __name__ == "__main__":
    sys.exit(main())
