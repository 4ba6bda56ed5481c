"""Stopped runs: a SIGKILLed run resumes exactly, the RNG and damaged checkpoints on resume, a changed
recipe refused, Ctrl-C and SIGTERM say where `--resume` goes on, workers stop with their launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import takes_ctrl_c
from train_runs import REPO, adapter, log_rows, max_diff, recipe, run, train_here
from train_runs import flash_data  # noqa: F401  (a pytest fixture)

from vidmusician.training.train import main
from vidmusician.training.train_state import latest_checkpoint


# ---- resume ----------------------------------------------------------------------------------

KILLER = """
import os, signal, sys
import vidmusician.training.train_state as train_state

real_write = train_state.write_safetensors

def write_safetensors(filename, tensors, metadata=None):
    real_write(filename, tensors, metadata=metadata)
    filename = str(filename)
    if filename.endswith("optimizer.safetensors") and ".tmp-step-00000008" in filename:
        with open(filename, "r+b") as f:  # the kill lands halfway through the write
            f.truncate(os.path.getsize(filename) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

train_state.write_safetensors = write_safetensors
from vidmusician.training.train import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_checkpoint_then_resume_equals_an_uninterrupted_run(flash_data, tmp_path, capsys):
    r = recipe(tmp_path, grad_accum=2, max_steps=12, save_every=4, eval_every=1000)
    args = ["--recipe", r, "--data", flash_data]
    straight = tmp_path / "straight"
    train_here(args + ["--output", straight])

    out = tmp_path / "killed"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    proc = run(args + ["--output", out], launcher=[sys.executable, str(killer)])
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = out / "checkpoints"
    # The half-written checkpoint never became visible: `latest` still names step 4, complete.
    assert latest_checkpoint(out) == ckpts / "step-00000004"
    assert (ckpts / ".tmp-step-00000008" / "optimizer.safetensors").is_file()
    assert not (ckpts / ".tmp-step-00000008" / "trainer_state.json").exists()
    assert not (ckpts / "step-00000008").exists()
    files = sorted(p.name for p in (ckpts / "step-00000004").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    size = sum(p.stat().st_size for p in (ckpts / "step-00000004").iterdir())
    assert size < 1_000_000  # adapter + optimizer state only; the tiny backbone alone is larger in fp32

    assert main([str(a) for a in args] + ["--output", str(out)]) == 2  # checkpoints there: --resume needed
    capsys.readouterr()
    train_here(args + ["--output", out, "--resume"])
    assert "at step 4" in capsys.readouterr().out
    assert not (ckpts / ".tmp-step-00000008").exists()
    assert max_diff(adapter(straight), adapter(out)) < 1e-6
    losses = {r["step"]: r["loss"] for r in log_rows(straight) if "loss" in r}
    again = {r["step"]: r["loss"] for r in log_rows(out) if "loss" in r and r["step"] > 4}
    assert all(abs(losses[s] - v) < 1e-6 for s, v in again.items()) and len(again) == 8
    # The killed run's rows past its checkpoint (steps 5-8) were cut when the resumed run redid them.
    assert [r["step"] for r in log_rows(out) if "loss" in r] == list(range(1, 13))


# ---- resume: the RNG and damaged checkpoints -------------------------------------------------


@pytest.fixture(scope="module")
def short_run(flash_data, tmp_path_factory):
    """A 4-step run in this process with checkpoints at steps 2 and 4, and the RNG state it ended with."""
    tmp = tmp_path_factory.mktemp("short")
    r = recipe(tmp, max_steps=4, save_every=2, keep_checkpoints=3, eval_every=1000)
    out = tmp / "run"
    args = ["--recipe", str(r), "--data", str(flash_data), "--backbone", "tiny"]
    assert main(args + ["--output", str(out)]) == 0
    return args, out, torch.get_rng_state()


def rewound(run_dir: Path, to: Path) -> Path:
    """A copy of a run as if it had stopped after its step-2 checkpoint."""
    import shutil

    shutil.copytree(run_dir, to)
    shutil.rmtree(to / "adapter")
    (to / "checkpoints" / "latest").write_text("step-00000002\n")
    return to


def test_resume_restores_the_rng_where_it_is_next_used(short_run, tmp_path):
    """After a resume the RNG runs on exactly as in the uninterrupted run (dropout in the trainer
    would see the same numbers): here, the state both runs end with."""
    args, straight, end_state = short_run
    import shutil

    out = rewound(straight, tmp_path / "run")
    shutil.rmtree(out / "checkpoints" / "step-00000004")
    assert main(args + ["--output", str(out), "--resume"]) == 0
    assert torch.equal(torch.get_rng_state(), end_state)
    assert max_diff(adapter(straight), adapter(out)) < 1e-6


def test_a_damaged_checkpoint_falls_back_to_the_one_before(short_run, tmp_path, capsys):
    args, straight, _ = short_run
    out = rewound(straight, tmp_path / "run")
    (out / "checkpoints" / "latest").write_text("step-00000004\n")
    newest = out / "checkpoints" / "step-00000004" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a full disk cut it short
    capsys.readouterr()
    assert main(args + ["--output", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{newest.parent}: damaged checkpoint: optimizer.safetensors (" in err  # the file, not just the folder
    assert "resuming from step-00000002" in err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and all(w.startswith("vidmusician.training.train: warning: ") for w in warnings), err
    assert max_diff(adapter(straight), adapter(out)) < 1e-6  # steps 3-4 redone exactly

    # Nothing readable left: a clear error, never a silent start from scratch.
    (out / "checkpoints" / "step-00000002" / "adapter_model.safetensors").write_bytes(b"garbage")
    (out / "checkpoints" / "step-00000004" / "trainer_state.json").write_text("{")
    assert main(args + ["--output", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint to resume from" in err and "delete" in err and "Traceback" not in err


def test_resume_refuses_a_changed_recipe_but_takes_a_longer_run(short_run, tmp_path, capsys):
    """A new lr, seed or batch size would be ignored (the optimizer's state wins) or break the exact
    resume; only how long, how often it logs/evaluates/saves and how it loads may change."""
    args, straight, _ = short_run
    out = rewound(straight, tmp_path / "run")
    saved = (out / "recipe.json").read_text()
    capsys.readouterr()
    assert main(args + ["--output", str(out), "--resume", "--set", "lr=0.02", "--set", "seed=5",
                        "--set", "max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "lr: 0.01 -> 0.02; seed: 1234 -> 5)" in err and "new --output" in err and "max_steps:" not in err
    assert (out / "recipe.json").read_text() == saved and not (out / "adapter").exists()

    assert main(args + ["--output", str(out), "--resume", "--set", "max_steps=5", "--set", "log_every=2",
                        "--set", "save_every=1"]) == 0
    assert json.loads((out / "recipe.json").read_text())["max_steps"] == 5
    assert (out / "checkpoints" / "step-00000005").is_dir()


@pytest.mark.parametrize("signum, rc, save_every", [("SIGINT", 130, 2), ("SIGTERM", 143, 1000)])
def test_an_interrupted_run_says_where_resume_goes_on_in_one_line(flash_data, tmp_path, signum, rc, save_every):
    """Ctrl-C or SIGTERM mid-run: the step reached and the last checkpoint, no traceback, 128 + the signal."""
    import re
    import signal
    import time

    args = ["--recipe", recipe(tmp_path, max_steps=100000, save_every=save_every), "--data", flash_data,
            "--output", tmp_path / "run", "--backbone", "tiny"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "vidmusician.training.train"] + [str(a) for a in args], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=takes_ctrl_c)
    log, deadline = tmp_path / "run" / "log.jsonl", time.time() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(getattr(signal, signum))
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == rc and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    if save_every == 2:
        found = re.fullmatch(r"vidmusician\.training\.train: interrupted at step (\d+); the last checkpoint is step "
                             r"(\d+): `--resume` continues from there", last)
        assert found, err[-3000:]
        step, saved = int(found[1]), int(found[2])
        # An interrupt during a step's save leaves the checkpoint before it the last one.
        assert step >= 3 and saved % 2 == 0 and step - 2 <= saved <= step
        assert latest_checkpoint(tmp_path / "run").name == f"step-{saved:08d}"
    else:
        assert re.fullmatch(r"vidmusician\.training\.train: interrupted at step \d+, before the first checkpoint: "
                            r"the same command starts over", last), err[-3000:]


# ---- the launcher dies -----------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_stop_when_the_launcher_is_killed(flash_data, tmp_path):
    """accelerate launch starts workers in their own sessions: killing it alone must not leave them training.

    Their stderr is a pipe that closes with the launcher (as under ``subprocess.run`` with a
    timeout): a worker's notice to it fails, and the worker must still stop.

    Until then they evaluate and save at every step on a one-window holdout (``eval_windows=1``):
    process 1 evaluates none (and samples none) while process 0 does both, and neither waits for
    the other forever (test_uneven_shares has the other commands where a process has nothing to do).
    """
    import signal
    import time

    log = tmp_path / "out.txt"
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(30500 + os.getpid() % 1000), "-m", "vidmusician.training.train"]
    args = ["--recipe", recipe(tmp_path, max_steps=100000, log_every=1, batch_size=1, eval_every=1, eval_windows=1,
                               save_every=1), "--data", flash_data, "--output", tmp_path / "run", "--backbone", "tiny"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with open(log, "w") as out:
        proc = subprocess.Popen(launcher + [str(a) for a in args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while "step 2 holdout_loss" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert "step 2 holdout_loss" in log.read_text(), log.read_text()[-3000:]
        assert latest_checkpoint(tmp_path / "run") is not None  # and saved, each step
        workers += children(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()  # the read end of the workers' stderr: gone with the launcher
        deadline = time.time() + 30
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(w) for w in workers), log.read_text()[-2000:]
    finally:
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
