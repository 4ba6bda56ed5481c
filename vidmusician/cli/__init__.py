"""`vidmusician` command line: thin subcommands over the library.

Each subcommand lives in ``vidmusician/cli/commands/<name>.py`` and defines ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. User errors
(:class:`~vidmusician.errors.VidMusicianError`) print one line on stderr and exit
with status 2. Building the parser imports every subcommand module, so those
import the library (torch, audiocraft) inside ``run``: ``vidmusician -h`` and a
mistyped argument answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..arguments import Parser
from ..errors import VidMusicianError, one_line

COMMANDS = ("info", "features", "generate", "prepare", "eval", "demo", "push")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vidmusician", description="Video-to-music generation with MusicGen adapters.")
    parser.add_argument("--version", action="version", version=f"vidmusician {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name in COMMANDS:
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (VidMusicianError, OSError) as exc:  # OSError: the file system said no (full disk, read-only)
        print(f"vidmusician {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vidmusician {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
