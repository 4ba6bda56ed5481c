"""Command-line parsing shared by ``vidmusician`` and the modules run with ``python -m``.

Below its users: the CLI (:mod:`vidmusician.cli`) and the training entry point
(``python -m vidmusician.training.train``) both build on :class:`Parser`.
"""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``vidmusician generate: error: ...`` (``-h`` shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but a word no option takes is said by the subcommand's parser (``vidmusician train:
        error: ...``, where argparse names the top-level program), with how to write ``--set`` when it is
        that option's stray value."""
        args = sys.argv[1:] if args is None else list(args)
        namespace, extra = self.parse_known_args(args, namespace)
        if extra:
            self._parser_of(namespace).error(f"unrecognized arguments: {' '.join(extra)}{_set_hint(args, extra)}")
        return namespace

    def _parser_of(self, namespace) -> argparse.ArgumentParser:
        """The parser of the subcommand ``namespace`` holds (this one, when it has none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(namespace, action.dest, None), self)
        return self


def _set_hint(args: list[str], extra: list[str]) -> str:
    """``; --set takes KEY=VALUE: --set max_steps=10`` when a stray word followed ``--set KEY`` (a space
    where the ``=`` goes), else ''."""
    for i in range(2, len(args)):
        if args[i] in extra and args[i - 2] == "--set" and "=" not in args[i - 1]:
            return f"; --set takes KEY=VALUE: --set {args[i - 1]}={args[i]}"
    return ""
