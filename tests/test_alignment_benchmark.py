"""benchmarks/alignment.py: its videos carry their events where it says, and the whole script runs (tiny settings;
its numbers are printed, never asserted)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys

import pytest

from test_benchmarks import load_script


@pytest.fixture
def trainer_here(monkeypatch):
    """The script's training runs (``python -m vidmusician.training.train ...``) in this process: the same
    command line without a fresh interpreter's start-up (most of a tiny run's time). Other commands run as
    they are."""
    from vidmusician.training.train import main

    real_run, ran = subprocess.run, []

    def run(cmd, *args, **kwargs):
        if list(cmd[1:3]) != ["-m", "vidmusician.training.train"]:
            return real_run(cmd, *args, **kwargs)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in cmd[3:]])
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, code, out.getvalue(), err.getvalue())

    monkeypatch.setattr(subprocess, "run", run)
    return ran


def test_the_videos_change_at_their_event_frames(tmp_path):
    from vidmusician.video.features import extract_features

    alignment = load_script("alignment")
    events = [10, 30, 51]
    video = alignment.write_video(tmp_path / "v.mp4", scene=2, events=events, num_frames=75)
    change = extract_features(video, "tiny", device="cpu").local_feats.float().mean(dim=1)
    change[0] = 0  # the first frame has no predecessor (d_0 = 1)
    # A flash changes its own frame and the next one; the drifting square barely changes any other.
    top = sorted(change.topk(2 * len(events)).indices.tolist())
    assert top == sorted(f + d for f in events for d in (0, 1)), (top, change)


def test_the_script_trains_both_stages_and_prints_every_condition(tmp_path, monkeypatch, capsys, trainer_here):
    monkeypatch.setattr(sys, "argv", ["alignment.py", "--train", "4", "--holdout", "2", "--test", "2", "--scenes", "2",
                                      "--batch", "2", "--steps1", "2", "--steps2", "2", "--seconds", "1",
                                      "--soundtrack", "aac", "--cfg", "1", "3", "--plausibility", "0", "0.1",
                                      "--workdir", str(tmp_path / "w")])
    load_script("alignment").main()
    out = capsys.readouterr().out
    assert len(trainer_here) == 2  # stage 1, then stage 2
    # The soundtracks went through AAC in the mp4 and back: the fine codebooks changed, codebook 0 did not
    # (measured 0.000 0.007 0.067 0.383 on 72 clips).
    changed = [float(x) for x in re.search(r"^tokens the soundtrack changed, per codebook: (.+)$", out, re.M)
               .group(1).split()]
    assert changed[0] == 0 and changed[-1] > 0.1, out
    curve = re.findall(r"^\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) \(([\d.]+)\)" + r"\s+([\d.]+)" * 3 + "$", out, re.M)
    assert [(float(a), float(c)) for a, c, *_ in curve] == [(0, 1), (0, 3), (0.1, 1), (0.1, 3)], out
    assert (tmp_path / "w" / "stage1" / "adapter" / "adapter_config.json").is_file()
    assert '"stage": 2' in (tmp_path / "w" / "stage2" / "adapter" / "adapter_config.json").read_text()
    rows = re.findall(r"^(default s|greedy)\s+(.+?)" + r"\s+([\d.]+)" * 5 + "$", out, re.M)
    assert [(m, c) for m, c, *_ in rows] == [
        (m, c) for m in ("default s", "greedy")
        for c in ("no video", "stage 1", "stage 1+2", "stage 1+2, shuffled video")], out
    assert all(0 <= float(x) <= 1 for row in rows for x in row[2:])
    # The clips' own soundtracks, decoded: the onset detector hears their events.
    ceiling = float(re.search(r"audio F1 of the test clips' own soundtracks ([\d.]+)$", out, re.M).group(1))
    assert ceiling > 0.7, out


def test_the_lr_sweep_prints_a_row_per_rate_and_the_base_norm(tmp_path, monkeypatch, capsys, trainer_here):
    monkeypatch.setattr(sys, "argv", ["alignment.py", "--lr-sweep", "1e-3", "5e-1", "--sweep-steps", "2",
                                      "--train", "4", "--holdout", "2", "--batch", "2", "--seconds", "2",
                                      "--workdir", str(tmp_path / "w")])
    load_script("alignment").main()
    out = capsys.readouterr().out
    assert len(trainer_here) == 2  # one run per rate
    base = float(re.search(r"^base \(no video\): hidden norm ([\d.]+)$", out, re.M).group(1))
    rows = re.findall(r"^\s+([\de.+-]+)" + r"\s+([\d.]+)" * 4 + "$", out, re.M)
    assert [float(r[0]) for r in rows] == [1e-3, 5e-1], out
    # Two steps at 1e-3 barely move the adapters: the hidden states stay the base's (measured
    # 18.53 against 18.55); two at 5e-1 blow them up (1588).
    assert float(rows[0][4]) == pytest.approx(base, rel=0.02), out
    assert float(rows[1][4]) > 3 * base, out
