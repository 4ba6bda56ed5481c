"""What training shows: trackers' event files with the expected scalars, audio samples, a progress bar."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from vidmusician.training.dataset import DatasetMeta, ShardWriter
from vidmusician.video.features import VideoFeatures
from vidmusician.training.monitor import flat_config
from vidmusician.training.train import main

CARD = 400


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eight sources of one random 2 s window each (100 frames at the tiny codec's 50 Hz); two held out."""
    root = tmp_path_factory.mktemp("monitor") / "data"
    root.mkdir()
    DatasetMeta("tiny", 32000, 1, 50.0, 4, CARD, "tiny", 32, 16, 1.0, 25.0, 2.0, 2.0).save(root)
    writer = ShardWriter(root)
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        feats = VideoFeatures(torch.randn(2, 32, generator=g), torch.rand(50, 16, generator=g), 1.0, 25.0, 2.0,
                              "tiny")
        writer.add({"source": f"v{i}", "split": "train" if i < 6 else "holdout", "text": None},
                   [(0.0, torch.randint(0, CARD, (4, 100), generator=g), feats)])
    writer.flush()
    return root


def train(data, tmp_path, capsys, *extra: str) -> tuple[int, str, str]:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stage": 1, "batch_size": 2, "max_steps": 4, "warmup_steps": 1, "num_workers": 0,
                                  "eval_every": 2, "eval_windows": 2, "save_every": 1000, "log_every": 1,
                                  "gradient_checkpointing": False,
                                  "adapter": {"memory_dim": 32, "attn_dim": 16, "attn_heads": 2}}))
    capsys.readouterr()
    code = main(["--recipe", str(recipe), "--data", str(data), "--output", str(tmp_path / "run"),
                 "--backbone", "tiny", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tensorboard_gets_losses_learning_rate_and_audio_samples(data, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out, err = train(data, tmp_path, capsys, "--report-to", "tensorboard")
    assert code == 0, err
    run = tmp_path / "run"
    events = EventAccumulator(str(run / "trackers" / "vidmusician"), size_guidance={"audio": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("loss", "lr", "holdout_loss", "holdout_loss_mismatched_video"):
        assert tag in scalars, scalars
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("holdout_loss")] == [2, 4]
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(losses, rel=1e-6)
    assert [e.step for e in events.Audio("holdout_sample")] == [2, 4]
    # A sample per evaluation beside the checkpoints: 2 s (the clip's length, under the 5 s cap) of music.
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["step-00000002.wav", "step-00000004.wav"]
    wav, rate = sf.read(run / "samples" / samples[0])
    assert rate == 32000 and len(wav) == 2 * 32000 and abs(wav).max() > 0
    # No bar when stderr is not a terminal (a log file): a plain line at the first step instead.
    assert "step 4 loss" in out and "training:" not in err and "step 1/4, " in err


def test_the_bar_shows_loss_and_time_left(tmp_path, capsys):
    from accelerate import Accelerator

    from vidmusician.training.monitor import Monitor

    monitor = Monitor(Accelerator(cpu=True), tmp_path, {}, 1, 5, progress=True)
    monitor.step()
    monitor.log(2, loss=2.5, lr=0.125)
    monitor.step()
    monitor.close()
    out = capsys.readouterr()
    bar = out.err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("training:  60%") and "3/5" in bar and "<00:" in bar and "loss=2.5" in bar, out.err
    assert "step 2 loss 2.5 lr 0.125" in out.out
    assert "s/step" not in out.err  # the bar alone, no plain lines


def test_without_a_terminal_plain_lines_tell_the_progress(tmp_path, capsys):
    """A stderr that is no terminal gets a line at the first step, then one a minute (37.1 s steps: every
    second step); the rate and time left count from where the run started (a resumed run's step 100)."""
    from accelerate import Accelerator

    from vidmusician.training.monitor import Monitor

    now = [0.0]
    monitor = Monitor(Accelerator(cpu=True), tmp_path, {}, 100, 2100, clock=lambda: now[0])
    capsys.readouterr()
    for _ in range(6):
        now[0] += 37.1
        monitor.step()
    monitor.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["step 101/2100, 37.1 s/step, about 20 h 36 min left",  # 1999 x 37.1 s
                     "step 103/2100, 37.1 s/step, about 20 h 34 min left",
                     "step 105/2100, 37.1 s/step, about 20 h 33 min left"], lines


def test_other_processes_write_no_progress_lines(tmp_path, capsys):
    from types import SimpleNamespace

    from vidmusician.training.monitor import Monitor

    other = SimpleNamespace(is_main_process=False, trackers=[], log_with=None, end_training=lambda: None)
    monitor = Monitor(other, tmp_path, {}, 0, 10)
    monitor.step()
    monitor.close()
    assert capsys.readouterr().err == ""


def test_a_log_line_is_flushed_at_once(tmp_path, monkeypatch):
    """A stdout that is a file or a pipe is block-buffered: each log line is flushed as it is written."""
    import io
    import sys

    from accelerate import Accelerator

    from vidmusician.training.monitor import Monitor

    class Buffered(io.StringIO):
        flushed = ""

        def flush(self):
            self.flushed = self.getvalue()

    out = Buffered()
    monkeypatch.setattr(sys, "stdout", out)
    monitor = Monitor(Accelerator(cpu=True), tmp_path, {}, 0, 10)
    monitor.log(1, loss=2.5)
    assert out.flushed == "step 1 loss 2.5\n"
    monitor.close()


def test_durations_read_as_hours_minutes_or_seconds():
    from vidmusician.training.monitor import about

    assert [about(s) for s in (0.4, 59.4, 60, 3599, 3600, 73800)] == ["0 s", "59 s", "1 min", "59 min", "1 h 0 min",
                                                                       "20 h 30 min"]


def test_the_log_starts_where_the_run_starts(tmp_path):
    """A resume cuts log.jsonl back to its checkpoint's step (the killed run's later rows, a torn row); a run
    started over begins a new log."""
    from accelerate import Accelerator

    from vidmusician.training.monitor import Monitor

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    monitor = Monitor(Accelerator(cpu=True), tmp_path, {}, 4, 8)
    monitor.log(5, loss=0.5)
    monitor.close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    Monitor(Accelerator(cpu=True), tmp_path, {}, 0, 8).close()
    assert log.read_text() == ""


def test_a_sample_leaves_the_training_random_state_alone(data, tmp_path):
    """A seeded sample leaves the RNG alone: a checkpoint saves (and resume restores) the same state either way."""
    from accelerate import Accelerator

    from vidmusician import attach_adapters
    from vidmusician.random_backbones import tiny_musicgen
    from vidmusician.config import AdapterConfig
    from vidmusician.training.dataset import PreparedDataset
    from vidmusician.training.monitor import Monitor

    musicgen = tiny_musicgen()
    vm = attach_adapters(musicgen, AdapterConfig.for_backbone(musicgen, encoder="tiny", global_dim=32, local_dim=16,
                                                              memory_dim=32, attn_dim=16, attn_heads=2))
    monitor = Monitor(Accelerator(cpu=True), tmp_path, {}, 0, 1)
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    path = monitor.sample(vm, PreparedDataset(data, "holdout"), 3, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert path == tmp_path / "samples" / "step-00000003.wav" and path.is_file()
    monitor.close()


def test_unknown_or_missing_tracker_is_one_line(data, tmp_path, capsys):
    code, _, err = train(data, tmp_path, capsys, "--report-to", "tensorbored")
    assert code == 2 and "--report-to tensorbored: unknown tracker" in err and len(err.strip().splitlines()) == 1


def test_recipe_becomes_flat_hyperparameters():
    assert flat_config({"lr": 0.1, "betas": [0.9, 0.95], "adapter": {"rank": 4}, "init_adapter": None}) == \
        {"lr": 0.1, "betas": "[0.9, 0.95]", "adapter.rank": 4, "init_adapter": "null"}


def test_the_logged_loss_counts_every_target_as_the_holdout_loss_does(data, tmp_path, capsys):
    """With plausible_targets the optimized objective leaves targets out; the logged loss still counts every
    target: at step 1 (the initial weights' forward, before any update) it is the unfiltered run's loss."""
    rows = {}
    for fraction in (0.0, 0.5):
        (tmp_path / str(fraction)).mkdir()
        code, _, err = train(data, tmp_path / str(fraction), capsys, "--set", "max_steps=1", "--set",
                             f"plausible_targets={fraction}")
        assert code == 0, err
        log = tmp_path / str(fraction) / "run" / "log.jsonl"
        rows[fraction] = next(json.loads(line) for line in log.read_text().splitlines() if '"loss"' in line)
    plain, filtered = rows[0.0], rows[0.5]
    assert plain["step"] == filtered["step"] == 1
    assert filtered["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert plain["objective"] == pytest.approx(plain["loss"], rel=1e-6)
    assert filtered["objective"] < 0.9 * filtered["loss"]  # the filter leaves targets out of the objective
