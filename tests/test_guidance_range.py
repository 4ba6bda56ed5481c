"""Guidance coefficients: [0, 10] gives finite music at both ends; outside it, one line (exit 2) or a ConfigError.

A coefficient of 1e300 made the guided logits infinite and sampling died with
"probability tensor contains either inf, nan or element < 0"; a negative one was
taken silently. The ends of the range run with adapters pushed far from their
initialization (large video effects), through the command a user runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import save_tiny_adapter
from media import flash_video
from test_bad_input import refused, run

from vidmusician.checks import MAX_GUIDANCE
from vidmusician.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "tiny", "--encoder", "tiny"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return flash_video(tmp_path_factory.mktemp("media") / "clip.mp4", [0.3, 0.9, 1.5], 2.0, size=32)


@pytest.fixture(scope="module")
def strong_adapter(tmp_path_factory) -> Path:
    """A stage-2 test adapter with every weight moved by 2 (its video effect is large)."""
    return save_tiny_adapter(tmp_path_factory.mktemp("adapter") / "strong", scale=2.0, seed=3)


@pytest.mark.parametrize("args, needle", [
    (["--video-cfg", "1e300"], "--video-cfg: must be in [0, 10], got 1e300"),
    (["--text-cfg", "1e300", "--text", "piano"], "--text-cfg: must be in [0, 10]"),
    (["--cfg-coef", "10.5"], "--cfg-coef: must be in [0, 10]"),
    (["--video-cfg", "-0.5"], "--video-cfg: must be in [0, 10], got -0.5"),
    (["--text-cfg", "-3", "--text", "piano"], "--text-cfg: must be in [0, 10]"),
])
def test_the_command_refuses_coefficients_outside_the_range(args, needle, clip, tmp_path, capsys):
    out = tmp_path / "out.wav"
    refused(run(capsys, "generate", clip, *TINY, "-o", out, *args), needle)
    assert not out.exists()


def test_a_real_process_refuses_a_huge_coefficient(clip, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vidmusician", "generate", str(clip), *TINY, "--video-cfg", "1e300",
                           "-o", str(tmp_path / "out.wav")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--video-cfg: must be in [0, 10]" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("coefs", [dict(video_cfg_coef=1e300), dict(text_cfg_coef=1e300), dict(cfg_coef=-1.0),
                                   dict(video_cfg_coef=-1e-9), dict(text_cfg_coef=float("nan"))])
def test_python_refuses_them_before_loading_anything(coefs, clip):
    from vidmusician import generate

    with pytest.raises(ConfigError, match=r"cfg_coef must be a number in \[0, 10\]"):
        generate(clip, backbone="tiny", encoder="tiny", text="piano", **coefs)


@pytest.mark.parametrize("text_cfg, video_cfg", [(0, 0), (MAX_GUIDANCE, MAX_GUIDANCE), (MAX_GUIDANCE, 0),
                                                 (0, MAX_GUIDANCE)])
def test_the_ends_of_the_range_give_finite_music(text_cfg, video_cfg, clip, strong_adapter, tmp_path, capsys):
    out = tmp_path / "out.wav"
    code, err = run(capsys, "generate", clip, "--adapter", strong_adapter, "--backbone", "tiny", "--text", "piano",
                    "--text-cfg", text_cfg, "--video-cfg", video_cfg, "--seed", "1", "-o", out, "--quiet")
    assert code == 0, err
    wav, _ = sf.read(out)
    assert len(wav) and np.isfinite(wav).all()


def test_the_demo_refuses_them(clip, tmp_path):
    from vidmusician.demo import Scorer, ScoreRequest

    scorer = Scorer(backbone="tiny", encoder="tiny", device="cpu", max_duration=10, workdir=tmp_path)
    try:
        for cfg in (dict(video_cfg=11.0), dict(text_cfg=-1.0)):
            with pytest.raises(ConfigError, match=r"must be a number in \[0, 10\]"):
                scorer.score(ScoreRequest(str(clip), duration=1.0, **cfg))
    finally:
        scorer.close()
