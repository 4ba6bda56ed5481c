"""File names that are not UTF-8, through every command's real entry point.

A POSIX file name is any bytes but ``/`` and NUL; Python hands the bytes that are
not UTF-8 over as lone surrogates (``b"caf\\xe9"`` is ``"caf\\udce9"``), which
``str.encode()``, a UTF-8 terminal, decord and strict JSON refuse. Each command
runs as a user's shell runs it (``python -m vidmusician ...``, bytes arguments)
with such names as input, output and folder, and must work: exit 0, outputs named
after the input's bytes, messages and JSON records that show the bytes as ``\\xNN``
(:func:`vidmusician.errors.printable`) and that a rerun reads back. A second run of
a command (the rerun, the default output name) runs in this process with the same
arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_adapter
from media import flash_video

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "tiny", "--encoder", "tiny"]
ODD = b"caf\xe9"  # Latin-1 "café": not UTF-8
SHOWN = "caf\\xe9"  # how messages and records write it


def odd(folder: Path, name: bytes) -> Path:
    """``folder / name`` for a name given as bytes (a Path with the surrogates Python uses for them)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def cli(*args, module: str = "vidmusician", cwd=None) -> tuple[int, str, str]:
    """Runs a command in its own process; stdout and stderr as the UTF-8 a terminal shows (strict)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", LC_ALL="C.UTF-8", PYTHONIOENCODING="")
    proc = subprocess.run([sys.executable, "-m", module, *(os.fsencode(str(a)) for a in args)],
                          capture_output=True, env=env, cwd=cwd, timeout=300)
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")  # fails on bytes a terminal cannot show
    assert "Traceback" not in err, err
    # Nor xformers' banner (logged when audiocraft imports it on a build without its C++ ops), which the
    # commands that load a model would show first in a fresh process.
    assert "XFORMERS" not in err.upper(), err
    return proc.returncode, out, err


def here(capsys, *args) -> tuple[int, str, str]:
    """A command run again in this process (its first run, in its own process, was the user's): the same
    arguments, and output that a UTF-8 terminal could show (no lone surrogates), without another start-up."""
    from vidmusician.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    out.encode("utf-8"), err.encode("utf-8")  # strict: fails on a name printed as its surrogates
    assert "Traceback" not in err, err
    return code, out, err


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """``src/`` with ``caf\\xe9.mp4`` (2 s, with audio) and ``ok.mp4``; ``ad\\xe9/``, a tiny adapter."""
    root = tmp_path_factory.mktemp("odd")
    music = 0.1 * np.random.default_rng(0).standard_normal((1, 64000)).astype(np.float32)
    (root / "src").mkdir()
    flash_video(root / "src" / "ok.mp4", [0.5, 1.2], 2.0, size=32, audio=music)
    shutil.copy(root / "src" / "ok.mp4", odd(root / "src", ODD + b".mp4"))
    save_tiny_adapter(odd(root, b"ad\xe9"))
    return root


def test_features_names_its_output_after_the_input(media):
    video = odd(media / "src", ODD + b".mp4")
    code, out, err = cli("features", video, "--encoder", "tiny", "-q")
    assert code == 0, err
    assert odd(media / "src", ODD + b".features.safetensors").is_file()
    assert f"{SHOWN}.features.safetensors: global" in out


def test_generate_with_an_odd_video_adapter_and_output(media, tmp_path, capsys, monkeypatch):
    video, out_file = odd(media / "src", ODD + b".mp4"), odd(tmp_path, b"out\xe9.mp4")
    code, _, err = cli("generate", video, *TINY, "--adapter", odd(media, b"ad\xe9"), "--duration", "1", "-q",
                       "-o", out_file)
    assert code == 0, err
    assert out_file.stat().st_size > 0 and f"wrote {tmp_path}/out\\xe9.mp4" in err
    monkeypatch.chdir(tmp_path)
    code, _, err = here(capsys, "generate", video, *TINY, "--duration", "1", "-q")  # the default name
    assert code == 0, err
    assert odd(tmp_path, ODD + b"_music.wav").is_file()


def test_info_reads_an_odd_adapter_folder(media):
    code, out, err = cli("info", odd(media, b"ad\xe9"))
    assert code == 0 and "adapter for tiny" in out, err


def test_prepare_train_and_rerun_with_odd_names(media, tmp_path, capsys):
    """Ids, holdout, shards, errors.jsonl and the summary; the rerun finds every source done; the trainer reads it."""
    src = tmp_path / "src"
    shutil.copytree(media / "src", src)
    odd(src, b"notes\xff.mp4").write_text("these are notes, not a video")
    data = odd(tmp_path, b"data\xe9")
    args = ["prepare", src, data, *TINY, "--window", "1", "--hop", "1", "--holdout", "0.5"]
    code, out, err = cli(*args)
    assert code == 0, err
    assert "3 sources: 0 already done, 2 prepared" in out and "notes\\xff.mp4" in out
    rows = [json.loads(line) for line in (data / "index.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["source"] for r in rows} == {f"{SHOWN}.mp4", "ok.mp4"}
    assert {r["split"] for r in rows} == {"train", "holdout"}
    failed = json.loads((data / "errors.jsonl").read_text(encoding="utf-8"))
    assert failed["source"] == "notes\\xff.mp4" and "notes\\xff.mp4" in failed["error"]
    code, out, err = here(capsys, *args)
    assert code == 0 and "3 sources: 3 already done, 0 prepared" in out, out + err

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stage": 1, "batch_size": 2, "max_steps": 2, "warmup_steps": 1, "num_workers": 0,
                                  "eval_every": 1000, "save_every": 1000, "gradient_checkpointing": False,
                                  "adapter": {"memory_dim": 32, "attn_dim": 16, "attn_heads": 2}}))
    run = odd(tmp_path, b"run\xe9")
    code, out, err = cli("--recipe", recipe, "--data", data, "--output", run, "--backbone", "tiny",
                         module="vidmusician.training.train")
    assert code == 0, err
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and "run\\xe9" in out


def test_prepare_refuses_two_names_of_one_id(media, tmp_path):
    """``caf\\xe9.mp4`` spelled out in UTF-8 and the Latin-1 name both read ``caf\\xe9.mp4``: refused, not merged."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(media / "src" / "ok.mp4", odd(src, ODD + b".mp4"))
    shutil.copy(media / "src" / "ok.mp4", src / f"{SHOWN}.mp4")
    code, _, err = cli("prepare", src, tmp_path / "data", *TINY)
    assert code == 2 and f"both are named {SHOWN}.mp4 in the dataset; rename one" in err, err
    assert len(err.strip().splitlines()) == 1


def test_eval_with_odd_names(media, tmp_path):
    videos, generated = tmp_path / "videos", tmp_path / "generated"
    videos.mkdir()
    generated.mkdir()
    shutil.copy(odd(media / "src", ODD + b".mp4"), odd(videos, ODD + b".mp4"))
    shutil.copy(odd(media / "src", ODD + b".mp4"), odd(generated, ODD + b".mp4"))  # its own track as the music
    report, plots = odd(tmp_path, b"report\xe9.json"), odd(tmp_path, b"plots\xe9")
    code, out, err = cli("eval", "--videos", videos, "--generated", generated, "--encoder", "tiny", "--out", report,
                         "--plot", plots)
    assert code == 0, err
    assert SHOWN in out and f"{SHOWN}:" in err
    clip = json.loads(report.read_text(encoding="utf-8"))["files"][0]
    assert clip["name"] == SHOWN and clip["video"].endswith(f"{SHOWN}.mp4")
    assert odd(plots, ODD + b".png").is_file()


def test_demo_scores_an_odd_upload(media, tmp_path):
    """The page hands the scorer the upload's path; the outputs are named after it."""
    from vidmusician.demo import Scorer, ScoreRequest

    scorer = Scorer(backbone="tiny", encoder="tiny", device="cpu", max_duration=10, workdir=tmp_path)
    try:
        result = scorer.score(ScoreRequest(str(odd(media / "src", ODD + b".mp4")), seed=1, duration=1.0))
    finally:
        scorer.close()
    assert os.fsencode(result.wav.name) == ODD + b"_music.wav" and result.plot.is_file()
