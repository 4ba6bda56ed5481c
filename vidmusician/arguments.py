"""Command-line parsing shared by ``vidmusician`` and the modules run with ``python -m``.

Below its users: the CLI (:mod:`vidmusician.cli`) and the training entry point
(``python -m vidmusician.training.train``) both build on :class:`Parser`.
"""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``vidmusician generate: error: ...`` (``-h`` shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")
