"""Trains the video adapters of a frozen MusicGen on a prepared dataset, with Accelerate.

One process (``vidmusician train`` takes the same options)::

    python -m vidmusician.training.train --recipe recipes/stage1_semantic.json --data data/ --output runs/stage1

Several GPUs or nodes (the same script, the launcher sets up DDP)::

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m vidmusician.training.train \\
        --recipe recipes/stage1_semantic.json --data data/ --output runs/stage1

What trains is data in the recipe (stage and adapter groups; the model is built by
:mod:`vidmusician.training.model_setup`). The loss is MusicGen's own: masked cross-entropy
per codebook of ``LMModel.compute_predictions``, averaged over codebooks
(:mod:`vidmusician.training.objective`). The log's ``loss`` counts every target, as ``holdout_loss`` does;
``objective`` is the number the gradient descends (without the targets ``plausible_targets``
leaves out, with ``codebook_weights``). Checkpoints (``OUTPUT/checkpoints/step-N``) hold only the
adapter, the optimizer, the scheduler, the RNG states and the step; ``--resume``
continues from the latest one exactly. The release adapter is ``OUTPUT/adapter``.
A progress bar shows the loss and the time left; ``--report-to tensorboard`` (or
any Accelerate tracker) records the losses and learning rate, and each evaluation
writes a short sample of music for a holdout clip to ``OUTPUT/samples`` (see
:mod:`vidmusician.training.monitor`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from ..arguments import Parser
from ..config import adapter_folder
from ..errors import VidMusicianError, one_line, printable, warnings_as_lines
from ..fileio import atomic_write
from .dataset import Collate, EpochBatches, MismatchedVideos, TextDropout
from .launch import check_stop, first_process, say_last, stop_on_sigterm, stop_with_launcher, stopped_by_sigterm
from .losses import loss_mask
from .model_setup import build_model, optimizer_groups
from .monitor import Monitor
from .objective import Objective, codebook_weights, holdout_loss
from .preflight import check_start
from .recipe import lr_factor, schedule_change
from .run_folder import RunFolder
from .train_options import add_arguments
from .train_state import TrainState, interrupted_line, latest_checkpoint, restore_rng, resume, save_checkpoint


PROGRAM = "vidmusician.training.train"


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def build_parser() -> Parser:
    """The command line of ``python -m vidmusician.training.train`` (``vidmusician train`` has the same options)."""
    p = Parser(prog="python -m vidmusician.training.train", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM stopped training after ``step`` optimizer steps (``sigterm``: which of the two)."""

    def __init__(self, step: int, sigterm: bool):
        super().__init__(step, sigterm)
        self.step, self.sigterm = step, sigterm


def train(args, program: str = PROGRAM) -> Path:
    """Runs one training stage; returns the release adapter folder.

    ``program`` starts the lines it prints on stderr (warnings, a damaged checkpoint passed over).

    A run that fails before its first step takes back what it added to ``--output``
    (:class:`~vidmusician.training.run_folder.RunFolder`); the folder of a run that has
    checkpoints is never touched.

    Raises:
        Interrupted: Ctrl-C or SIGTERM (under :func:`~vidmusician.training.launch.stop_on_sigterm`);
            the checkpoints written before it stay.
    """
    folder = RunFolder(args.output)
    progress = {"resumed": False, "stepped": False, "step": 0}
    try:
        return _train(args, progress, program)
    except BaseException as exc:
        # Process 0 alone: the others wrote nothing there, and on a shared file system they would race it.
        if not (progress["resumed"] or progress["stepped"]) and first_process():
            folder.remove_additions()
        if isinstance(exc, KeyboardInterrupt) or stopped_by_sigterm(exc):  # also an error a library made of it
            raise Interrupted(progress["step"], not isinstance(exc, KeyboardInterrupt)) from None
        raise


def _train(args, progress: dict, program: str) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed


    out = Path(args.output)
    # Checkpoints there: the folder is the run's, whatever fails below (train() never takes it back).
    progress["resumed"] = latest_checkpoint(out) is not None
    num_processes = int(os.environ.get("WORLD_SIZE", "1"))  # what the Accelerator below will count
    # Process 0 alone says the recipe's warnings, once its checks passed, before what may stop the run later.
    warn = (lambda line: print(f"{program}: warning: {line}", file=sys.stderr)) \
        if first_process() else None
    start = check_start(args, num_processes, warn)
    recipe, resumed, resume_from, meta, train_set, holdout = (start.recipe, start.resumed, start.checkpoint,
                                                              start.meta, start.train_set, start.holdout)
    # `accelerate launch --multi_gpu` on a machine without GPUs starts the processes, but
    # Accelerate forms their (gloo) process group only when told to run on the CPU.
    cpu = not torch.cuda.is_available() and num_processes > 1
    # Under accelerate launch its config's precision; otherwise the device's (train_options.mixed_precision),
    # and a resumed run's own.
    accelerator = Accelerator(mixed_precision=start.mixed_precision,
                              gradient_accumulation_steps=recipe.grad_accum, cpu=cpu,
                              log_with=start.trackers or None,
                              project_config=ProjectConfiguration(project_dir=str(out),
                                                                  logging_dir=str(out / "trackers")))
    # Same seed on every process: identical adapter initialization (DDP also broadcasts it).
    set_seed(recipe.seed)
    # The longest window trained on (clips shorter than --window give shorter ones): the adapter's trained_window.
    window = max((float(row["seconds"]) for row in train_set.rows), default=meta.window)
    vm = build_model(args, recipe, meta, accelerator.device, window)
    params = vm.trainable_parameters()
    optimizer = torch.optim.AdamW(optimizer_groups(vm, recipe.weight_decay), lr=recipe.lr, betas=tuple(recipe.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, recipe))
    objective, optimizer = accelerator.prepare(Objective(vm, recipe.plausible_targets), optimizer)

    state = TrainState()
    if resume_from is not None:
        state = resume(out, vm, optimizer, scheduler, accelerator,
                       say=lambda line: accelerator.is_main_process
                       and print(f"{program}: {printable(line)}", file=sys.stderr))
        accelerator.print(f"resumed at step {state.step}")
        change = schedule_change(resumed.max_steps, recipe, state.step)
        if change:
            accelerator.print(change)
            # The checkpoint's optimizer holds the old schedule's lr for this step: the new one's from here.
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * lr_factor(state.step, recipe)
    progress["step"] = state.step
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        # Fields the run's recipe.json lacked stay out: it trained with their former values.
        saved = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in resumed.former}
        (out / "recipe.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        vm.print_trainable_parameters()

    monitor = Monitor(accelerator, out, dataclasses.asdict(recipe), state.step, recipe.max_steps)

    def evaluate(step):
        # The unwrapped module: processes may hold different numbers of holdout batches,
        # so evaluation must not run DDP's collective forward.
        model = accelerator.unwrap_model(objective)
        if len(holdout):
            monitor.log(step, holdout_loss=holdout_loss(model, holdout, accelerator, recipe.batch_size,
                                                        recipe.eval_windows),
                        holdout_loss_mismatched_video=holdout_loss(model, MismatchedVideos(holdout), accelerator,
                                                                   recipe.batch_size, recipe.eval_windows))
            monitor.sample(vm, holdout, step, recipe.seed)

    sampler = EpochBatches(len(train_set), recipe.batch_size, accelerator.num_processes, accelerator.process_index,
                           recipe.seed, start=state.step * recipe.grad_accum)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=Collate(meta.frame_rate),
                                         num_workers=recipe.num_workers)
    drop_texts = TextDropout(recipe.text_dropout, sampler)
    batches = iter(loader)  # draws a seed from the RNG: restore the checkpoint's state after it
    restore_rng(state)
    accelerator.print(f"training {len(train_set)} windows, global batch {sampler.global_batch * recipe.grad_accum}, "
                      f"steps {state.step} -> {recipe.max_steps}, mixed precision {accelerator.mixed_precision}")
    t0, logged = time.time(), state.step
    # backward() divides by grad_accum and DDP averages over processes: undo both, so
    # that each micro-batch's share of the global mean reaches the gradient whole.
    share = recipe.grad_accum * accelerator.num_processes
    weights = codebook_weights(recipe, vm.lm.num_codebooks).to(accelerator.device)
    while state.step < recipe.max_steps:
        check_stop()
        micro = [next(batches).to(accelerator.device) for _ in range(recipe.grad_accum)]
        # The step's loss is the mean over every valid token of the global batch (per
        # codebook), however the batch is split over processes and micro-batches.
        counts = sum(loss_mask(vm.lm, b.valid).sum(dim=(0, 2)) for b in micro).float()
        tokens = accelerator.reduce(counts, "sum").clamp(min=1)
        # [2, K]: the cross-entropy of every target (the holdout loss's measure) and the optimized
        # sums (which leave out the targets the base rules out, with plausible_targets).
        loss_sum = torch.zeros(2, *tokens.shape, device=tokens.device)
        for j, batch in enumerate(micro):
            texts = drop_texts(batch.texts, state.step * recipe.grad_accum + j)  # the sampler's batch number
            # accumulate(): no DDP gradient sync until the last micro-batch.
            with accelerator.accumulate(objective):
                sums, _, every = objective(batch.codes, batch.valid, batch.videos, texts, every_target=True)
                accelerator.backward((sums / tokens * weights).sum() * share)
                if accelerator.sync_gradients and recipe.grad_clip:
                    accelerator.clip_grad_norm_(params, recipe.grad_clip)
                optimizer.step()  # a no-op until the gradients are synced
                optimizer.zero_grad(set_to_none=True)
            loss_sum += torch.stack([every, sums.detach()])
        scheduler.step()
        state.step += 1
        progress["stepped"], progress["step"] = True, state.step
        monitor.step()
        if state.step % recipe.log_every == 0 or state.step == recipe.max_steps:
            every, optimized = (accelerator.reduce(loss_sum, "sum") / tokens).unbind()
            # loss: comparable to holdout_loss; objective: what the gradient descends.
            monitor.log(state.step, loss=every.mean().item(), objective=(optimized * weights).sum().item(),
                        lr=scheduler.get_last_lr()[0],
                        sec_per_step=(time.time() - t0) / (state.step - logged))
            t0, logged = time.time(), state.step
        if state.step % recipe.eval_every == 0:
            evaluate(state.step)
        if state.step % recipe.save_every == 0 or state.step == recipe.max_steps:
            save_checkpoint(out, state, vm, optimizer, scheduler, accelerator, recipe.keep_checkpoints)

    if recipe.max_steps % recipe.eval_every:
        evaluate(state.step)
    release = out / "adapter"
    if accelerator.is_main_process:
        vm.save_pretrained(release)
        # What the recipe does not say, for the adapter's model card (vidmusician.model_card).
        # An init folder as an absolute path (the card follows it to stage 1's run from wherever
        # `push` runs); the window the longest trained on, as the adapter's trained_window.
        init = args.init or recipe.init_adapter
        init = str(adapter_folder(init).resolve()) if init is not None and Path(init).exists() else init
        record = dict(recipe=printable(args.recipe), init_adapter=init,
                      data=printable(args.data), train_windows=len(train_set),
                      holdout_windows=len(holdout), window=window, steps=state.step,
                      global_batch=sampler.global_batch * recipe.grad_accum, processes=accelerator.num_processes)
        atomic_write(out / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True)
                                                                         + "\n"))
        accelerator.print(f"adapter written to {printable(release)}")
    accelerator.wait_for_everyone()
    monitor.close()
    return release


def main(argv=None) -> int:
    return run(parse_args(argv), PROGRAM)


def run(args, program: str) -> int:
    """Trains as a command does: returns the exit status, says a user error or an interruption in one line.

    Args:
        args: the options of :func:`~vidmusician.training.train_options.add_arguments`, parsed.
        program: the command's name, which starts each line (``vidmusician train``).

    Returns:
        0; 2 for a user error; 130 after Ctrl-C, 143 after SIGTERM (128 + the signal, what a shell reports).
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by accelerate launch / torchrun
        stop_with_launcher(program)
    try:
        # A library's warning: one line of the command's, from the first process alone (the others would repeat it).
        with stop_on_sigterm(), warnings_as_lines(program, shown=first_process):
            train(args, program)
    except (VidMusicianError, OSError) as exc:  # OSError: a full disk or a read-only run folder;
        # checkpoints already written stay.
        say_last(f"{program}: error: {one_line(exc)}")
        return 2
    except Interrupted as exc:
        # No checkpoint is written here: the processes stop at different points of a step,
        # while a checkpoint (for an exact resume) needs all of them at the same step boundary.
        say_last(f"{program}: {interrupted_line(exc.step, args.output)}", stop=True, every_process=False)
        return 143 if exc.sigterm else 130  # 128 + the signal, what a shell reports for it
    return 0


if __name__ == "__main__":
    sys.exit(main())
