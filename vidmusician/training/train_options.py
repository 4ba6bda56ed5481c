"""The trainer's command line, shared by ``vidmusician train`` and ``python -m vidmusician.training.train``,
and the precision a run computes in when the command line leaves it out.

Light on purpose: ``vidmusician -h`` builds these options without importing torch or
audiocraft (the trainer itself takes seconds to import).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

# What `accelerate launch` passes its config's (or its flag's) precision through to the processes it starts.
LAUNCHER_PRECISION = "ACCELERATE_MIXED_PRECISION"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the training options (``--recipe``, ``--data``, ``--output``, ...) to ``parser``."""
    parser.add_argument("--recipe", required=True, metavar="FILE", help="recipe JSON (recipes/stage1_semantic.json, ...)")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder from `vidmusician prepare`")
    parser.add_argument("--output", required=True, metavar="DIR", help="run folder: checkpoints/, adapter/, log.jsonl")
    parser.add_argument("--backbone", default=None, metavar="NAME|PATH|tiny",
                        help="MusicGen name or folder, 'tiny' (random) or 'tiny-learned' (the practice run's, trained "
                             "on synthetic music) (default: the dataset's)")
    parser.add_argument("--init", default=None, metavar="DIR|ORG/NAME[@REV]",
                        help="adapter folder or Hub id (org/name[@revision]) to start from (overrides the recipe's "
                             "init_adapter)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --output, if any")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                        help="autocast precision. Default: under accelerate launch its config's (bf16 in "
                             "recipes/accelerate/*.yaml); otherwise bf16 on a GPU that computes in it, fp16 on an "
                             "older GPU, no on a CPU. --resume: the run's own (its checkpoints record it)")
    parser.add_argument("--report-to", nargs="+", default=["none"], metavar="TRACKER",
                        help="Accelerate trackers for losses, learning rate and audio samples: tensorboard, wandb, "
                             "mlflow, ... or all (files under --output's trackers/; default: none)")


def check_paths(args: argparse.Namespace) -> None:
    """The plain mistakes in a training command line's files: a recipe that is not there, or a key in it (or in a
    --set) that no field has; a --data folder that holds no prepared dataset.

    ``vidmusician train`` says them before it imports the trainer (torch and audiocraft: seconds); the trainer
    says the same lines (:func:`~vidmusician.training.preflight.check_start`), where it is started otherwise.

    Raises:
        ConfigError: the recipe (:meth:`~vidmusician.training.recipe.Recipe.load`).
        DataError: no prepared dataset in --data.
    """
    from .recipe import Recipe
    from .shards import check_prepared

    Recipe.load(args.recipe, args.set)
    check_prepared(args.data)


def command_line(args: argparse.Namespace) -> list[str]:
    """The training options of ``args`` as a command line that parses back to them (for a relaunch)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    argv: list[str] = []
    for action in parser._actions:
        value, option = getattr(args, action.dest), action.option_strings[-1]
        if value is None or value is False:
            continue
        if value is True:
            argv.append(option)
        elif action.nargs in ("+", "*"):
            argv += [option, *map(str, value)]
        elif isinstance(value, list):  # --set KEY=VALUE, once per value
            argv += [a for v in value for a in (option, str(v))]
        else:
            argv += [option, str(value)]
    return argv


def mixed_precision(requested: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The precision to give ``Accelerator(mixed_precision=...)``.

    Args:
        requested: ``--mixed-precision`` (None when left out): it always wins.
        environ: the process's environment; under ``accelerate launch`` it holds the launcher's precision.

    Returns:
        ``requested`` when given; None under ``accelerate launch``, so that Accelerate takes its own
        config's precision (``--multi_gpu`` runs keep working as configured); otherwise what
        ``recipes/accelerate/single_gpu.yaml`` gives on this machine: ``bf16`` on a CUDA GPU that computes
        in it, ``fp16`` on an older one (its note says fp16 there), ``no`` on a CPU.
    """
    if requested is not None:
        return requested
    if LAUNCHER_PRECISION in environ:
        return None
    import torch

    if not torch.cuda.is_available():
        return "no"
    # Native bf16 only: torch's default also says yes where bf16 is emulated (pre-Ampere), at a crawl.
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
