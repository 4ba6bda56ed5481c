"""`vidmusician train`: the trainer behind the same CLI as every other command.

It trains in this process with ``python -m vidmusician.training.train``'s options, exit
statuses and one-line messages (its own name in front); the precision it computes in is the
device's unless a launcher's config says otherwise; ``--num-processes N`` trains in N processes
through ``accelerate launch`` (gloo on the CPU here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_damage import random_dataset

from vidmusician import cli
from vidmusician.training.train_options import add_arguments, command_line, mixed_precision
from vidmusician.training.train_state import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Six training and two holdout windows of the tiny backbone's shapes."""
    return random_dataset(tmp_path_factory.mktemp("train-cli") / "data")


def recipe(tmp_path: Path, **fields) -> Path:
    """A stage-1 recipe of tiny adapters, two steps of batch 2."""
    body = {"stage": 1, "batch_size": 2, "max_steps": 2, "warmup_steps": 1, "num_workers": 0, "eval_every": 1000,
            "save_every": 1000, "gradient_checkpointing": False,
            "adapter": {"memory_dim": 32, "attn_dim": 16, "attn_heads": 2}, **fields}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(body))
    return path


def train(*args) -> int:
    """`vidmusician train ARGS...` in this process, on one thread (a fresh interpreter's start-up would be most
    of a short run's time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli.main(["train", *map(str, args)])
    finally:
        torch.set_num_threads(threads)


def test_train_writes_the_adapter_and_says_its_precision(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--recipe", recipe(tmp_path), "--data", data, "--output", out, "--backbone", "tiny") == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()][-1] == 2
    # The settings line says the precision chosen: on this CPU, with no launcher, float32.
    assert re.search(r"^training 6 windows, global batch 2, steps 0 -> 2, mixed precision no$",
                     capsys.readouterr().out, re.M)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_train_refuses_a_missing_dataset_in_one_line(processes, tmp_path, capsys, monkeypatch):
    """Also before N processes start: from them the line would come N times, under the launcher's report."""
    def launch(*args):
        raise AssertionError(f"launched with a missing dataset: {args}")

    monkeypatch.setattr("vidmusician.training.launch.launch_here", launch)
    out = tmp_path / "run"
    assert train("--recipe", recipe(tmp_path), "--data", tmp_path / "none", "--output", out,
                 "--num-processes", processes) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidmusician train: error: ") and len(err.strip().splitlines()) == 1, err
    assert "not a prepared dataset" in err and "Traceback" not in err, err
    assert not out.exists()  # a run failing before its first step leaves no folder


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_dataset_whose_backbone_folder_is_not_here_says_to_pass_one(processes, data, tmp_path, capsys, monkeypatch):
    """A dataset prepared on another machine records that machine's backbone folder: without --backbone, one
    line names it and the option (not the loader's "no such folder"), before N processes start."""
    def launch(*args):
        raise AssertionError(f"launched: {args}")

    monkeypatch.setattr("vidmusician.training.launch.launch_here", launch)
    copied, there = tmp_path / "data", tmp_path / "elsewhere" / "mygen"
    shutil.copytree(data, copied)
    meta = json.loads((copied / "dataset.json").read_text())
    (copied / "dataset.json").write_text(json.dumps(dict(meta, backbone=str(there))))
    out = tmp_path / "run"
    assert train("--recipe", recipe(tmp_path), "--data", copied, "--output", out, "--num-processes", processes) == 2
    err = capsys.readouterr().err
    assert err == (f"vidmusician train: error: {copied}: prepared with the backbone folder {there}, which is not on "
                   f"this machine; pass that MusicGen: --backbone NAME_OR_FOLDER\n"), err
    assert not out.exists()


@pytest.mark.parametrize("backbone, said", [
    ("{tmp}/nowhere", "{tmp}/nowhere: no such folder; pass a hub name like facebook/musicgen-small"),
    ("{tmp}", "{tmp}: not a MusicGen folder (missing state_dict.bin, compression_state_dict.bin)"),
    ("random-huge", "unknown architecture 'huge'; choose one of small")])
def test_a_backbone_that_names_none_is_said_once_before_the_processes_start(backbone, said, data, tmp_path, capsys,
                                                                           monkeypatch):
    """What loading would refuse without a file read or the Hub is checked before `--num-processes` launches:
    one line, not one from each process."""
    def launch(*args):
        raise AssertionError(f"launched: {args}")

    monkeypatch.setattr("vidmusician.training.launch.launch_here", launch)
    backbone, said = backbone.format(tmp=tmp_path), said.format(tmp=tmp_path)
    out = tmp_path / "run"
    assert train("--recipe", recipe(tmp_path), "--data", data, "--output", out, "--backbone", backbone,
                 "--num-processes", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vidmusician train: error: {said}") and err.count("\n") == 1, err
    assert not out.exists()


def test_the_early_backbone_check_takes_every_name_built_by_name():
    """check_name refuses no name that load_backbone or load_codec builds ('random-encodec', a codec alone,
    is prepare's: the GPU script's prepare benchmark encodes with it)."""
    from vidmusician.backbones import check_name
    from vidmusician.hub_reach import BUILT_BACKBONES

    for name in (*BUILT_BACKBONES, "random-encodec"):
        check_name(name)


def checkpointed(out: Path, recipe_file: Path, **changed) -> Path:
    """``out`` as a run that saved a checkpoint in float32 (no weights: only what the checks before a run read),
    its recipe.json ``recipe_file``'s with the fields ``changed``."""
    (out / "checkpoints" / "step-00000002").mkdir(parents=True)
    (out / "checkpoints" / "step-00000002" / "trainer_state.json").write_text('{"mixed_precision": "no"}')
    (out / "recipe.json").write_text(json.dumps({**json.loads(recipe_file.read_text()), **changed}))
    return out


@pytest.mark.parametrize("case, argv, expected", [
    ("rerun", [], "already holds checkpoints: pass --resume"),
    ("rerun", ["--resume", "--set", "lr=1e-3"], "--resume with a recipe unlike the run's (lr: 0.0001 -> 0.001)"),
    ("rerun", ["--resume", "--mixed-precision", "bf16"], "--mixed-precision bf16: the run trained in no"),
    ("new", ["--init", "no/such/folder"], "no/such/folder: adapter folder not found (--init)"),
    ("new", ["--report-to", "nosuchtracker"], "--report-to nosuchtracker: unknown tracker"),
    # 6 windows: one process trains on batches of 4, two need 8.
    ("new", ["--set", "batch_size=4"], "the training split has 6 windows, fewer than one global batch (8)"),
])
def test_num_processes_says_a_user_error_once_before_launching(case, argv, expected, data, tmp_path, capsys,
                                                                monkeypatch):
    """What each process would refuse (a rerun without --resume, a resume unlike the run, a missing --init, an
    unknown tracker, too few windows for the global batch) is refused before the processes start: one line,
    exit 2, where the processes would say it once each under the launcher's traceback."""
    def launch(*args):
        raise AssertionError(f"launched: {args}")

    monkeypatch.setattr("vidmusician.training.launch.launch_here", launch)
    rec = recipe(tmp_path, lr=1e-4)
    out = checkpointed(tmp_path / "run", rec) if case == "rerun" else tmp_path / "run"
    assert train("--recipe", rec, "--data", data, "--output", out, "--backbone", "tiny", "--num-processes", "2",
                 *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidmusician train: error: ") and len(err.strip().splitlines()) == 1, err
    assert expected in err, err


def test_num_processes_refuses_more_processes_than_gpus(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert train("--recipe", recipe(tmp_path), "--data", data, "--output", tmp_path / "run",
                 "--num-processes", "2") == 2
    err = capsys.readouterr().err
    assert err == "vidmusician train: error: --num-processes 2: this machine has 1 GPU, one per process: give at most 1\n"


def test_sigterm_keeps_the_checkpoints_and_says_how_to_resume(data, tmp_path, capsys):
    """SIGTERM mid-run (as a scheduler sends it): 143 and one line naming the last checkpoint, which stays."""
    out = tmp_path / "run"
    log = out / "log.jsonl"

    def stop():
        deadline = time.time() + 60
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler turns it into an exception, in the main thread

    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    code = train("--recipe", recipe(tmp_path, max_steps=100000, save_every=2), "--data", data, "--output", out,
                 "--backbone", "tiny")
    stopper.join()
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(r"vidmusician train: interrupted at step (\d+); the last checkpoint is step (\d+): "
                         r"`--resume` continues from there", last)
    assert code == 143 and found and "Traceback" not in err, err
    assert latest_checkpoint(out).name == f"step-{int(found[2]):08d}"


def test_a_resumed_run_keeps_its_precision(data, tmp_path, capsys, monkeypatch):
    """A run begun in float32 (here, on the CPU) and resumed where the device's default is bf16 goes on in
    float32: resume is exact."""
    rec = recipe(tmp_path, max_steps=1, save_every=1)
    out = tmp_path / "run"
    assert train("--recipe", rec, "--data", data, "--output", out, "--backbone", "tiny") == 0
    capsys.readouterr()
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # as a new process starts: no precision set yet
    # The device's default, were the run new: bf16 (a GPU that computes in it).
    monkeypatch.setattr("vidmusician.training.preflight.mixed_precision", lambda requested: requested or "bf16")
    assert train("--recipe", rec, "--data", data, "--output", out, "--backbone", "tiny", "--resume",
                 "--set", "max_steps=2") == 0
    said = capsys.readouterr().out
    assert re.search(r"^training .*, steps 1 -> 2, mixed precision no$", said, re.M), said
    # The newest checkpoint's state cut short: resume goes back to the one before it, and so does its precision.
    state = out / "checkpoints" / "step-00000002" / "trainer_state.json"
    state.write_text(state.read_text()[:20])
    AcceleratorState._reset_state(reset_partial_state=True)
    assert train("--recipe", rec, "--data", data, "--output", out, "--backbone", "tiny", "--resume",
                 "--set", "max_steps=3") == 0
    said = capsys.readouterr().out
    assert re.search(r"^training .*, steps 1 -> 3, mixed precision no$", said, re.M), said


@pytest.mark.parametrize("requested, environ, cuda, bf16, expected", [
    (None, {}, False, False, "no"),
    (None, {}, True, True, "bf16"),
    (None, {}, True, False, "fp16"),  # a GPU before bf16 units (pre-Ampere)
    (None, {"ACCELERATE_MIXED_PRECISION": "fp16"}, True, True, None),  # accelerate launch: its config decides
    (None, {"ACCELERATE_MIXED_PRECISION": "no"}, False, False, None),
    ("no", {}, True, True, "no"),  # --mixed-precision wins
    ("bf16", {"ACCELERATE_MIXED_PRECISION": "fp16"}, False, False, "bf16"),
])
def test_the_precision_is_the_devices_unless_a_launcher_or_the_option_says(requested, environ, cuda, bf16, expected,
                                                                           monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    # Native bf16 only: torch's default answer also counts emulated bf16, which pre-Ampere GPUs have.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)
    assert mixed_precision(requested, environ) == expected


def test_the_relaunch_command_line_parses_back_to_the_same_options():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for argv in (["--recipe", "r.json", "--data", "d", "--output", "o"],
                 ["--recipe", "r.json", "--data", "d", "--output", "o", "--backbone", "tiny", "--init", "a",
                  "--resume", "--set", "lr=1e-3", "--set", "max_steps=5", "--mixed-precision", "bf16",
                  "--report-to", "tensorboard", "wandb"]):
        args = parser.parse_args(argv)
        assert parser.parse_args(command_line(args)) == args, command_line(args)


def test_the_launcher_takes_every_gpu_whatever_the_default_config_says():
    """A default accelerate config for one GPU (gpu_ids '0', what `accelerate config` writes there) would make
    the launcher refuse --multi_gpu: the launch names every GPU itself."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from vidmusician.training.launch import launch_command

    argv = launch_command(2, ["vidmusician", "train"], "no", 29500)
    args = launch_command_parser().parse_args(["--config_file", str(REPO / "recipes/accelerate/single_gpu.yaml"),
                                               *argv])
    _validate_launch_command(args)  # raises ValueError where the config's gpu_ids '0' would be taken
    assert args.gpu_ids == "all" and args.num_processes == 2


@pytest.mark.parametrize("raised, expected", [
    ("worker", 2),  # the first failure's status (a user error), not the SIGTERM of the worker stopped after it
    ("sigterm", 143),
    ("sigint", 130),
])
def test_the_launchers_end_is_the_commands_exit_status(raised, expected, monkeypatch):
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from vidmusician.training.launch import launch_here

    def launch(args):
        if raised == "worker":
            raise ChildFailedError("vidmusician", {1: ProcessFailure(1, 101, 2, "<N/A>"),
                                                   0: ProcessFailure(0, 100, -signal.SIGTERM, "<N/A>")})
        sig = signal.SIGTERM if raised == "sigterm" else signal.SIGINT
        signal.signal(sig, signal.SIG_IGN)  # the launcher's handler, left in place as it leaves its own
        raise SignalException(f"got {sig}", sigval=sig)

    monkeypatch.setattr("accelerate.commands.launch.launch_command", launch)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert launch_here(2, ["vidmusician", "train"], "no") == expected
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # put back


def test_sigterm_stops_two_processes_with_one_line(data, tmp_path):
    """SIGTERM to `vidmusician train --num-processes 2` (a scheduler's stop): the launcher passes it to both
    processes; 143 and the trainer's one line, no launcher traceback or report of the signal passed on."""
    out = tmp_path / "run"
    log = out / "log.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "vidmusician", "train", "--num-processes", "2",
                             "--recipe", str(recipe(tmp_path, max_steps=100000, save_every=2)), "--data", str(data),
                             "--output", str(out), "--backbone", "tiny"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "signal" not in err.lower(), err
    assert len(re.findall(r"^vidmusician train: interrupted at step \d+; the last checkpoint is step \d+", err,
                          re.M)) == 1, err
    assert "global batch 4" in stdout, stdout
