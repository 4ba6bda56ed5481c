"""A training run's folder, taken back when the run fails before its first step.

A run stopped at its start (a wrong backbone for the data, too few windows, a typo in
the recipe) should leave nothing behind that looks like a run: a ``recipe.json``
without checkpoints invites ``--resume`` of a run that never was. Only what the run
itself added is removed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class RunFolder:
    """What a run adds to ``out``, noted before the run writes anything.

    Args:
        out: the run folder (``--output``); it may not exist yet.
    """

    def __init__(self, out):
        self.out = Path(out).absolute()
        # The highest folder the run will create (the run folder, or a parent of it made for
        # it): everything in it is the run's. None: the run folder is there already.
        self.created = None
        path = self.out
        while not os.path.lexists(path):
            self.created, path = path, path.parent
        self.before = set(os.listdir(self.out)) if self.created is None and self.out.is_dir() else None

    def remove_additions(self) -> None:
        """Removes what the run added: the folders it created, else the entries that were not there before.

        For a run that failed before its first step, never for a resumed one (its
        folder holds checkpoints of steps already paid for).
        """
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        if self.before is None:  # not a folder: the run could not write into it
            return
        for name in sorted(set(os.listdir(self.out)) - self.before):
            path = self.out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
