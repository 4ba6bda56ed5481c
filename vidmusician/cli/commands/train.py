"""`vidmusician train --recipe R --data D --output O`: one training stage, in this process.

The options are those of ``python -m vidmusician.training.train`` (:mod:`vidmusician.training.train`),
with the same exit statuses and one-line messages. ``--num-processes N`` trains on N GPUs of this
machine through ``accelerate launch``; several machines, or a launcher config of your own:
``accelerate launch --config_file ... -m vidmusician.training.train ...`` (or ``-m vidmusician train``).
"""

from __future__ import annotations

import os

from ...checks import MAX_COUNT, arg_number
from ...errors import ConfigError
from ...training.train_options import LAUNCHER_PRECISION
from ...training.train_options import add_arguments as training_options
from ...training.train_options import check_paths

HELP = "train video adapters on a prepared dataset: one stage of a recipe"


def add_arguments(parser) -> None:
    training_options(parser)
    parser.add_argument("--num-processes", type=arg_number(integer=True, low=1, high=MAX_COUNT), default=1,
                        metavar="N",
                        help="train in N processes on this machine, one GPU each (DDP through accelerate launch; "
                             "on a machine without GPUs, N CPU processes over gloo; default 1). Several machines: "
                             "accelerate launch --config_file recipes/accelerate/multi_node.yaml -m "
                             "vidmusician.training.train ...")


def run(args) -> int:
    check_paths(args)  # a mistyped path or recipe key costs no model-stack import
    if args.num_processes > 1:
        return relaunch(args)
    from ...training.train import run as train

    return train(args, "vidmusician train")


def relaunch(args) -> int:
    """``--num-processes N``: runs ``accelerate launch`` of ``vidmusician train`` in N processes, once what would
    fail in each of them has been checked here; returns the exit status."""
    import torch

    from ...training.launch import launch_here
    from ...training.preflight import check_start
    from ...training.train_options import command_line

    if "WORLD_SIZE" in os.environ:
        raise ConfigError("--num-processes: this process was started by a launcher (accelerate launch, "
                          "torchrun), which sets the number of processes: leave --num-processes out")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < args.num_processes:  # DDP takes a GPU per process: cuda:1 of a one-GPU machine fails late
        raise ConfigError(f"--num-processes {args.num_processes}: this machine has {gpus} GPU"
                          f"{'s' if gpus > 1 else ''}, one per process: give at most {gpus}")
    # A user error said here in one line: from the workers it would come once per process.
    start = check_start(args, args.num_processes)
    # Chosen here, where no launcher config is set: the precision one process would train in.
    precision = start.mixed_precision or os.environ[LAUNCHER_PRECISION]
    return launch_here(args.num_processes, ["vidmusician", "train", *command_line(args)], precision)
