"""What a training run checks before it builds a model: the user errors that need no backbone.

The trainer runs :func:`check_start` first thing in every process (a stat per shard and a
few small files: cheap). ``vidmusician train --num-processes N`` runs it once before it
starts the N processes, so that such an error is said in one line, exit status 2, instead
of once per process under the launcher's report of their failure.

Light on purpose: no audiocraft import, so the launching process starts its workers at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..backbones import check_name
from ..errors import ConfigError
from .dataset import DatasetMeta, PreparedDataset, check_training_split, verify_dataset
from .monitor import check_trackers
from .recipe import Recipe, Resumed, check_init_adapter, check_resume, lr_warning, schedule_warning
from .train_options import mixed_precision
from .train_state import latest_checkpoint, saved_precision

__all__ = ["Start", "check_start"]


class Start(NamedTuple):
    """What :func:`check_start` found: the run to train, checked."""

    recipe: Recipe  # to train with: a resumed run's has the former values its recipe.json lacks
    resumed: Resumed  # how the run's recipe.json differs (``Resumed(recipe)`` for a new run)
    checkpoint: Path | None  # the latest checkpoint, to resume from (None: a new run)
    mixed_precision: str | None  # for ``Accelerator(mixed_precision=...)``; None: the launcher's config
    trackers: list[str]  # --report-to, checked
    meta: DatasetMeta
    train_set: PreparedDataset
    holdout: PreparedDataset


def check_start(args, num_processes: int, warn: Callable[[str], object] | None = None) -> Start:
    """Checks a run's options against its recipe, run folder and dataset, before any model loads.

    Args:
        args: the options of :func:`~vidmusician.training.train_options.add_arguments`, parsed.
        num_processes: the processes that will train (the global batch is ``batch_size`` x this).
        warn: called with what a recipe trains but likely not as meant (a schedule that never
            reaches its learning rate, a learning rate above the safe range), once every check has
            passed; None: not said.

    Raises:
        ConfigError: a mistyped recipe or tracker; checkpoints in ``--output`` without ``--resume``; a
            ``--resume`` whose recipe or ``--mixed-precision`` differs from the run's; a missing ``--init``.
        DataError: not a prepared dataset, a shard missing or cut short, fewer training windows
            than one global batch; a dataset whose backbone folder is not on this machine, without ``--backbone``.
        BackboneError: a backbone that names none (:func:`~vidmusician.backbones.check_name`: an unknown
            'random-SIZE', a folder that is not there or holds no MusicGen).
    """
    recipe = Recipe.load(args.recipe, args.set)
    out = Path(args.output)
    trackers = check_trackers(args.report_to)
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not args.resume:
        raise ConfigError(f"{out} already holds checkpoints: pass --resume to continue, or use a new --output")
    check_init_adapter(args.init or recipe.init_adapter, from_recipe=not args.init)
    resumed, precision = Resumed(recipe), mixed_precision(args.mixed_precision)
    if checkpoint is not None:
        resumed = check_resume(recipe, out)  # before the trainer writes recipe.json again
        recipe = resumed.recipe
        precision = _resumed_precision(args.mixed_precision, out) or precision
    meta = DatasetMeta.load(args.data)
    # A folder of the machine that prepared it, or a --backbone that names none: said here, once.
    check_name(meta.backbone_to_load(args.data, args.backbone))
    # Every shard there and whole (a stat each), so a short run cannot miss a shard cut short;
    # `vidmusician prepare --verify` reads everything. Every process checks: all stop alike.
    verify_dataset(args.data, full=False)
    train_set, holdout = PreparedDataset(args.data, "train"), PreparedDataset(args.data, "holdout")
    check_training_split(len(train_set), len(holdout), recipe.batch_size * num_processes, args.data)
    # Last: a run that one of the checks above stops says its error alone, not after a warning about its recipe.
    for warning in (schedule_warning(recipe), lr_warning(recipe)):
        if warn and warning:
            warn(warning)
    return Start(recipe, resumed, checkpoint, precision, trackers, meta, train_set, holdout)


def _resumed_precision(requested: str | None, run_dir: Path) -> str | None:
    """The precision a resumed run trains in: the one its checkpoints were trained in (None: not recorded).

    Resume is exact: a run begun in float32 on one machine goes on in float32 on a GPU whose
    default is bf16. Another precision is refused, as a recipe field that changes the
    numbers is (:func:`~vidmusician.training.recipe.check_resume`).
    """
    saved, checkpoint = saved_precision(run_dir)
    if saved is not None and requested is not None and requested != saved:
        raise ConfigError(f"--mixed-precision {requested}: the run trained in {saved} ({checkpoint.name}), and a "
                          f"resumed run keeps its precision: leave --mixed-precision out, or train with {requested} "
                          f"into a new --output")
    return saved
