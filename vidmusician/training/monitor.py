"""What a training run shows while it runs: a progress bar, log lines, trackers, audio samples.

The bar is for a terminal; a stderr that is a file or a pipe gets a plain progress line a minute.

Log lines go to the terminal and ``OUTPUT/log.jsonl``; with ``--report-to`` the same
numbers go to Accelerate's trackers (TensorBoard, W&B, MLflow, ...; their files
under ``OUTPUT/trackers``). At each evaluation a short piece of music for one
holdout clip is written to ``OUTPUT/samples/step-N.wav`` (and to the tracker when
it takes audio).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from ..audio_io import write_audio
from ..errors import ConfigError
from ..fileio import atomic_write

SAMPLE_SECONDS = 5.0  # long enough to hear the adapter follow the video, short enough to cost little
# Seconds between the plain progress lines of a stderr that is no terminal: often enough to see a
# slow run move (a CPU step can take half a minute), rarely enough to keep a log file short.
LINE_EVERY = 60.0


def check_trackers(names: list[str]) -> list[str]:
    """The tracker names of ``--report-to``, checked: known to Accelerate and installed (one line if not)."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    names = [n for n in names if n != "none"]
    known = LoggerType.list()
    for name in names:
        if name not in known:
            raise ConfigError(f"--report-to {name}: unknown tracker; choose from {', '.join(known)} or none")
        if name != "all" and LoggerType(name) not in get_available_trackers():
            raise ConfigError(f"--report-to {name}: the {name} package is not installed; pip install {name}")
    return names


def flat_config(config: dict) -> dict:
    """A recipe as tracker hyperparameters: nested keys joined by '.', lists and None as text."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in flat_config(value).items()})
        elif isinstance(value, (bool, int, float, str)):
            flat[key] = value
        else:
            flat[key] = json.dumps(value)
    return flat


def about(seconds: float) -> str:
    """A duration as a person reads it: ``20 h 30 min``, ``4 min``, ``37 s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def keep_log_until(path: Path, step: int) -> None:
    """Cuts ``log.jsonl`` back to the rows of steps up to ``step``, where the run starts (0: a new log).

    A resumed run redoes the steps after its checkpoint, and a run started over redoes
    them all: their old rows (and a row a kill cut short) would stand beside the new ones.
    """
    if not path.is_file():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row a kill cut short
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            rows.append(line + "\n")
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(rows)))


class Monitor:
    """Progress bar, log lines and trackers of one run; everything is written by the main process only.

    Args:
        accelerator: the run's Accelerator (built with ``log_with`` and ``project_dir``).
        out: the run folder.
        config: the recipe, stored by the trackers as hyperparameters.
        start, total: the step the run starts at and the last step; ``log.jsonl``'s rows of later
            steps (a resumed run's, or all of a run started over at 0) are removed.
        progress: show the bar; default: when stderr is a terminal. Without the bar (nohup, a batch
            job, ``| tee``), stderr gets a plain line at the first step, then every :data:`LINE_EVERY`
            seconds: ``step 10/2000, 37.1 s/step, about 20 h 30 min left``.
        clock: seconds, for the plain lines' cadence and rate (tests pass a fake one).
    """

    def __init__(self, accelerator, out: Path, config: dict, start: int, total: int, progress: bool | None = None,
                 clock=time.monotonic):
        from tqdm.auto import tqdm

        self.accelerator, self.out = accelerator, Path(out)
        self.main = accelerator.is_main_process
        if self.main:
            keep_log_until(self.out / "log.jsonl", start)
        if accelerator.trackers or accelerator.log_with:
            accelerator.init_trackers("vidmusician", config=flat_config(config))
        progress = sys.stderr.isatty() if progress is None else progress
        # The bar goes to stderr; log lines go to stdout above it (tqdm.write keeps them apart).
        self.bar = tqdm(total=total, initial=start, unit="step", desc="training", disable=not (self.main and progress),
                        dynamic_ncols=True, file=sys.stderr)
        # A bar redrawn into a file is one growing line of carriage returns, and the first log
        # line may be log_every steps away: plain lines instead.
        self.lines = self.main and not progress
        self.clock, self.start, self.total = clock, start, total
        self.done, self.began, self.last_line = start, clock(), None

    def step(self) -> None:
        """One optimizer step done."""
        self.bar.update(1)
        self.done += 1
        if not self.lines:
            return
        now = self.clock()
        if self.last_line is None or now - self.last_line >= LINE_EVERY:
            rate = (now - self.began) / (self.done - self.start)
            print(f"step {self.done}/{self.total}, {rate:.3g} s/step, about {about(rate * (self.total - self.done))} "
                  f"left", file=sys.stderr, flush=True)
            self.last_line = now

    def log(self, step: int, **values) -> None:
        """A log line (terminal, ``log.jsonl``), the bar's numbers and the trackers' scalars."""
        if not self.main:
            return
        from tqdm.auto import tqdm

        tqdm.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in dict(step=step, **values).items()))
        sys.stdout.flush()  # a stdout that is a file or a pipe is block-buffered: the line now, not pages later
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(dict(step=step, **values)) + "\n")
        shown = {k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "holdout_loss", "lr")}
        self.bar.set_postfix(shown, refresh=False)
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.accelerator.log(scalars, step=step)

    def sample(self, vm, holdout, step: int, seed: int) -> Path | None:
        """Music for the first holdout clip, written to ``samples/step-N.wav`` and the trackers that take audio.

        A seeded generation runs in a forked RNG: the training's random state (and so
        an exact resume) does not depend on whether samples are made.
        """
        if not self.main or not len(holdout):
            return None
        clip = holdout[0].features
        duration = min(SAMPLE_SECONDS, clip.duration)
        vm.eval()
        try:
            with torch.no_grad():
                wav = vm.generate([clip], duration=duration, seed=seed)[0]
        finally:
            vm.train()  # the adapters' training mode (the frozen backbone stays in eval)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        path = write_audio(self.out / "samples" / f"step-{step:08d}.wav", wav, vm.sample_rate)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_audio("holdout_sample", wav.mean(0), step, sample_rate=vm.sample_rate)
                tracker.writer.flush()
        return path

    def close(self) -> None:
        """Closes the bar and the trackers (their files complete)."""
        self.bar.close()
        self.accelerator.end_training()
