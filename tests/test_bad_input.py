"""Every command against bad input and a file system that says no: one line, exit 2, nothing lost.

Each case runs the command's entry point (``vidmusician.cli.main``, the console
script's function, or ``python -m vidmusician.training.train``'s ``main``) and checks what
a user sees: exit status 2, one short line on stderr naming the input, no
traceback, no partial output, and earlier outputs unchanged. Read-only folders
and full disks are real: small tmpfs mounts (the tests run as root in CI; without
root they are skipped with the reason). ``test_cli_in_a_real_process`` runs a case
of each kind through a separate process, as a user's shell does.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media import flash_video, moving_square, write_video

from vidmusician import cli
from vidmusician.training.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "tiny", "--encoder", "tiny"]
LONG_NAME = "v" * 300 + ".mp4"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    music = 0.1 * np.random.default_rng(0).standard_normal((1, 64000)).astype(np.float32)
    return flash_video(path, [0.5, 1.2], 2.0, size=32, audio=music)


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory) -> Path:
    """An adapter folder whose config names the backbone 'tiny'."""
    from conftest import save_tiny_adapter

    return save_tiny_adapter(tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """The tiny backbone as a folder: its shape is known only once it loads."""
    from vidmusician.random_backbones import TINY_CODEC, codec_config, export_musicgen, lm_config, tiny_musicgen

    return export_musicgen(tiny_musicgen(), lm_config(32, 4, 4, card=400), codec_config(**TINY_CODEC),
                           tmp_path_factory.mktemp("backbone") / "tiny")


@pytest.fixture
def mount(tmp_path):
    """A factory of small tmpfs folders: ``mount(kb, readonly=False)``; unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small or read-only file system")
    mounted = []

    def make(kb: int = 64, readonly: bool = False, fill: dict | None = None) -> Path:
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(path)]).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(path)
        for name, data in (fill or {}).items():
            (path / name).write_bytes(data)
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)])


def full(folder: Path) -> None:
    """Fills a tmpfs to the last byte."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def run(capsys, *args, train: bool = False) -> tuple[int, str]:
    capsys.readouterr()
    args = [str(a) for a in args]
    try:
        code = train_main(args) if train else cli.main(args)
    except SystemExit as exc:  # argparse's errors exit; the console script exits the same way
        code = exc.code
    return code, capsys.readouterr().err


def refused(result: tuple[int, str], *needles: str) -> str:
    code, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if ": error: " in line]
    # One error line; other lines may only be the command's own one-line warnings.
    assert len(errors) == 1 and "Traceback" not in err, err
    assert all(": warning: " in line for line in lines if line not in errors), err
    assert len(errors[0]) < 400, errors[0]
    assert all(n in err for n in needles), err
    return err


def leftovers(folder: Path) -> list[str]:
    """Temporary files a failed write left behind."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".part") or p.name.startswith(".tmp")]


# ---- generate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "not a video", "long name"])
def test_generate_refuses_bad_videos(case, clip, tmp_path, capsys):
    video = {"missing": tmp_path / "missing.mp4", "long name": tmp_path / LONG_NAME}.get(case)
    if case == "not a video":
        video = tmp_path / "notes.mp4"
        video.write_text("these are notes, not a video")
    out = tmp_path / "out.wav"
    refused(run(capsys, "generate", video, *TINY, "-o", out), str(video)[:40])
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("args, needle", [
    # Each named as the option is spelled on the command line, before any model loads.
    (["--duration", "1e300"], "argument --duration: must be in [0.02, 86400], got 1e300"),
    (["--duration", "0.001"], "argument --duration: must be in [0.02, 86400], got 0.001"),
    (["--duration", "-2"], "argument --duration: must be in [0.02, 86400], got -2"),
    (["--duration", "nan"], "argument --duration: must be in [0.02, 86400], got nan"),
    (["--top-k", "ten"], "--top-k"),
    (["--top-k", "-1"], "argument --top-k: must be >= 0, got -1"),
    (["--temperature", "0"], "argument --temperature: must be > 0, got 0"),
    (["--temperature", "inf"], "argument --temperature: must be > 0, got inf"),
    (["--plausibility", "2"], "argument --plausibility: must be in [0, 1], got 2"),
    (["--extend-stride", "0"], "argument --extend-stride: must be > 0, got 0"),
])
def test_generate_refuses_numbers_no_one_meant(args, needle, clip, tmp_path, capsys):
    out = tmp_path / "out.wav"
    refused(run(capsys, "generate", clip, *TINY, "-o", out, *args), needle)
    assert not out.exists()


# A backbone's bounds (tokens per codebook, window): checked before it loads where its name or the
# adapter's config tells them ('tiny': 400 tokens, a 30 s window of 50 Hz frames; the default
# facebook/musicgen-small: 2048), else once loaded; either way named as the option is spelled.
LOADS = "a model would load here"


@pytest.mark.parametrize("args, needle", [
    ([*TINY, "--top-k", "401"], "--top-k 401: more than the backbone's 400 tokens per codebook; use --top-k 400 or"),
    ([*TINY, "--extend-stride", "30"], "--extend-stride 30: must be shorter than the backbone's 30 s window"),
    ([*TINY, "--extend-stride", "0.01"], "--extend-stride 0.01: shorter than one codec frame (1/50 s)"),
    (["--encoder", "tiny", "--top-k", "2049"], "--top-k 2049: more than the backbone's 2048 tokens"),
    (["--adapter", "ADAPTER", "--top-k", "401"], "--top-k 401: more than the backbone's 400 tokens"),
    (["--adapter", "ADAPTER/adapter_config.json", "--top-k", "401"], "--top-k 401: more than the backbone's 400 tokens"),
    ([*TINY, "--top-k", "400", "--extend-stride", "29.9"], LOADS),  # within: on to the models
], ids=["top-k", "long stride", "short stride", "default backbone", "adapter's backbone", "adapter's config file",
        "within"])
@pytest.mark.parametrize("many", [False, True], ids=["one", "many"])
def test_generate_refuses_a_backbone_bound_before_it_loads(args, needle, many, clip, tiny_adapter, tmp_path,
                                                           capsys, monkeypatch):
    import vidmusician.pipeline as pipeline
    from vidmusician.errors import ConfigError

    def load_models(*a, **k):
        raise ConfigError(LOADS)

    monkeypatch.setattr(pipeline, "load_models", load_models)
    args = [a.replace("ADAPTER", str(tiny_adapter)) if a.startswith("ADAPTER") else a for a in args]
    out = f"{tmp_path / 'scored'}/" if many else tmp_path / "out.wav"  # a folder: the batch path
    err = refused(run(capsys, "generate", clip, "-o", out, "-q", *args), needle)
    assert needle == LOADS or LOADS not in err


@pytest.mark.parametrize("args, many", [(["--top-k", "401"], False), (["--encoder", "tiny", "--top-k", "401"], False),
                                        (["--encoder", "tiny", "--extend-stride", "30"], False),
                                        (["--encoder", "tiny", "--top-k", "401"], True),
                                        (["--encoder", "tiny", "--extend-stride", "30"], True)],
                         ids=["top-k, one", "top-k, one, encoder", "stride, one, encoder", "top-k, many",
                              "stride, many"])
def test_generate_names_the_option_a_loaded_backbone_bounds(args, many, clip, tiny_export, tmp_path, capsys,
                                                            monkeypatch):
    """A folder's backbone is known once loaded: the library's error, in the option's name, before
    any video's features are extracted."""
    import vidmusician.generation.windows as windows

    monkeypatch.setattr(windows, "features_of", lambda *a: pytest.fail("features were extracted"))
    out = f"{tmp_path / 'scored'}/" if many else tmp_path / "out.wav"
    refused(run(capsys, "generate", clip, "--backbone", tiny_export, "-o", out, "-q", *args),
            f"{' '.join(args[-2:])}: ")


def test_the_library_names_its_keywords():
    from types import SimpleNamespace

    from vidmusician.errors import ConfigError
    from vidmusician.generation.guidance import GenerationParams

    musicgen = SimpleNamespace(lm=SimpleNamespace(card=400), max_duration=30, frame_rate=50)
    with pytest.raises(ConfigError, match=r"^top_k=401: more than the backbone's 400 tokens per codebook; use top_k=400 "):
        GenerationParams(top_k=401).check(musicgen)
    with pytest.raises(ConfigError, match=r"^extend_stride=30: must be shorter than the backbone's 30 s window"):
        GenerationParams(extend_stride=30.0).check(musicgen)


@pytest.mark.parametrize("name", ["tiny", "tiny-t5", "tiny-learned"])
def test_the_bounds_known_by_name_are_the_loaded_ones(name):
    from vidmusician.backbones import load_backbone
    from vidmusician.generation.limits import BackboneLimits, known_limits

    musicgen = load_backbone(name, device="cpu")
    assert known_limits(name) == BackboneLimits.of(musicgen)


def test_generate_never_writes_over_its_input(clip, tmp_path, capsys):
    video = tmp_path / "mine.mp4"
    video.write_bytes(clip.read_bytes())
    refused(run(capsys, "generate", video, *TINY, "-o", video), "is the input")
    assert video.read_bytes() == clip.read_bytes()


def test_generate_refuses_a_codec_the_output_cannot_hold_before_any_model_loads(tmp_path, capsys, monkeypatch):
    """A .webm's VP8 has no place in .mp4: said in one line, with the fix as the user would type it
    (a .mkv -o name, or --format mkv), before the music is made."""
    import vidmusician.pipeline as pipeline
    from vidmusician.muxing import write_output
    from vidmusician.errors import VideoError

    webm = write_video(tmp_path / "clip.webm", moving_square(10), 25, codec="libvpx")
    monkeypatch.setattr(pipeline, "generate", lambda *a, **k: pytest.fail("the music was generated"))
    out = tmp_path / "scored.mp4"
    refused(run(capsys, "generate", webm, *TINY, "-o", out), "clip.webm", "vp8", ".mp4", "use a .mkv output")
    assert not out.exists() and not leftovers(tmp_path)
    # Chosen with --format, the fix is the --format to type.
    monkeypatch.chdir(tmp_path)
    said = refused(run(capsys, "generate", webm, *TINY, "--format", "mp4"), "clip.webm", "vp8", ".mp4")
    assert said.rstrip().endswith("; use --format mkv") and not (tmp_path / "clip_music.mp4").exists(), said
    # The writer says the same to a caller that did not check first, and leaves nothing.
    with pytest.raises(VideoError, match=r"clip\.webm: a \.mp4 file cannot hold its vp8 video") as err:
        write_output(out, np.zeros((1, 3200), np.float32), 32000, video=webm)
    assert "\n" not in str(err.value) and not out.exists() and not leftovers(tmp_path)
    with pytest.raises(VideoError, match=r"; use --format mkv$"):
        write_output(out, np.zeros((1, 3200), np.float32), 32000, video=webm, format_option="--format")


@pytest.mark.parametrize("target, needle", [("folder", "is a folder"), ("long", "too long"),
                                            ("missing folder", "does not exist")])
def test_generate_refuses_outputs_it_cannot_write(target, needle, clip, tmp_path, capsys):
    (tmp_path / "taken.wav").mkdir()
    out = {"folder": tmp_path / "taken.wav", "long": tmp_path / ("o" * 300 + ".wav"),
           "missing folder": tmp_path / "nope" / "out.wav"}[target]
    refused(run(capsys, "generate", clip, *TINY, "-o", out), needle)


@pytest.mark.parametrize("case", ["keep soundtrack, many", "keep soundtrack, named for you", "keep soundtrack, -o",
                                  "-o folder.v2, many", "-o file.wav, many", "-o newfolder, one", "missing among many"])
def test_generate_names_the_option_that_fixes_the_command(case, clip, tmp_path, capsys, monkeypatch):
    """Said in the options' names, with the fix, before any model loads; nothing written."""
    import vidmusician.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_models", lambda *a, **k: pytest.fail("a model loaded"))
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.mp4"
    other.write_bytes(clip.read_bytes())
    keep = "error: --keep-soundtrack needs a video output, not"
    args, needle = {
        "keep soundtrack, many": ([clip, other, "-o", "scored/", "--keep-soundtrack"],
                                  f"{keep} wav: use --format mp4, mov or mkv"),
        "keep soundtrack, named for you": ([clip, "--keep-soundtrack", "--format", "flac"],
                                           f"{keep} flac: use --format mp4, mov or mkv"),
        "keep soundtrack, -o": ([clip, "-o", "x.wav", "--keep-soundtrack"],
                                "error: x.wav: --keep-soundtrack needs a video output (.mp4, .mov, .mkv), "
                                "e.g. -o x.mp4"),
        "-o folder.v2, many": ([clip, other, "-o", "results.v2"], "end -o with / to name a folder: -o results.v2/"),
        "-o file.wav, many": ([clip, other, "-o", "all.wav"],
                              "into a folder; -o takes a folder (and --format their format): -o all/ --format wav"),
        "-o newfolder, one": ([clip, "-o", "newfolder"],
                              "unknown output extension '(none)'; use one of .flac, .wav, .mkv, .mov, .mp4; "
                              "for a folder, end it with / (-o newfolder/)"),
        # A path that does not exist is a mistake in the command: the others are not scored either.
        "missing among many": ([clip, "typo.mp4", other, "-o", "scored/"], "error: typo.mp4: no such file or folder"),
    }[case]
    refused(run(capsys, "generate", *TINY, "-q", *args), needle)
    assert sorted(os.listdir(tmp_path)) == ["other.mp4"]


def test_generate_into_a_read_only_folder(mount, clip, capsys):
    folder = mount(readonly=True)
    refused(run(capsys, "generate", clip, *TINY, "-o", folder / "out.wav"), "not writable")


def test_a_full_disk_keeps_the_earlier_output(mount, clip, tmp_path, capsys):
    """The music is written to a temporary name first: a full disk must not cost the earlier file."""
    earlier = b"RIFF-an-earlier-good-output"
    folder = mount(kb=256, fill={"out.wav": earlier})
    full(folder)
    err = refused(run(capsys, "generate", clip, *TINY, "-o", folder / "out.wav", "--quiet"), "disk is full")
    assert "out.wav" in err or str(folder) in err
    assert (folder / "out.wav").read_bytes() == earlier and not leftovers(folder)


# ---- features ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [(["--global-fps", "0"], "--global-fps: must be in (0, 1000]"),
                                          (["--local-fps", "1e300"], "--local-fps"),
                                          (["--batch-size", "0"], "--batch-size: must be in [1, 65536]")])
def test_features_refuses_numbers_no_one_meant(args, needle, clip, tmp_path, capsys):
    refused(run(capsys, "features", clip, "--encoder", "tiny", "-o", tmp_path / "f.safetensors", *args), needle)
    assert not (tmp_path / "f.safetensors").exists()


def test_features_full_disk_and_read_only(mount, clip, capsys):
    earlier = b"an earlier features file"
    small = mount(kb=64, fill={"f.safetensors": earlier})
    full(small)
    refused(run(capsys, "features", clip, "--encoder", "tiny", "-o", small / "f.safetensors", "-q"), "disk is full")
    assert (small / "f.safetensors").read_bytes() == earlier and not leftovers(small)
    readonly = mount(readonly=True)
    refused(run(capsys, "features", clip, "--encoder", "tiny", "-o", readonly / "f.safetensors"), "not writable")


# ---- prepare -------------------------------------------------------------------------------------


def test_prepare_refuses_bad_sources_and_settings(clip, tmp_path, capsys):
    refused(run(capsys, "prepare", tmp_path / "nothing", tmp_path / "data", *TINY), "nothing")
    refused(run(capsys, "prepare", clip.parent, tmp_path / "data", *TINY, "--window", "0"), "window")
    refused(run(capsys, "prepare", clip.parent, tmp_path / "data", *TINY, "--holdout", "1.5"), "holdout")
    a_file = tmp_path / "data.txt"
    a_file.write_text("a file where the dataset folder goes")
    refused(run(capsys, "prepare", clip.parent, a_file, *TINY), str(a_file))
    assert a_file.read_text() == "a file where the dataset folder goes"


def test_prepare_into_a_read_only_or_full_file_system(mount, clip, capsys):
    readonly = mount(readonly=True)
    refused(run(capsys, "prepare", clip.parent, readonly / "data", *TINY), str(readonly))
    small = mount(kb=48)
    full(small)
    refused(run(capsys, "prepare", clip.parent, small / "data", *TINY, "--window", "1", "--hop", "1"),
            "disk is full")
    assert not (small / "data").exists() or not leftovers(small / "data")


# ---- train ---------------------------------------------------------------------------------------


def test_train_refuses_a_missing_dataset_and_a_read_only_run_folder(mount, tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stage": 1, "max_steps": 2, "warmup_steps": 1}))
    refused(run(capsys, "--recipe", recipe, "--data", tmp_path / "none", "--output", tmp_path / "run", train=True),
            "not a prepared dataset")
    refused(run(capsys, "--recipe", tmp_path / "none.json", "--data", tmp_path, "--output", tmp_path / "run",
                train=True), "no such recipe")
    refused(run(capsys, "--recipe", recipe, train=True), "required")

    # A dataset that trains, and a run folder on a read-only file system: one line, nothing written.
    from test_damage import random_dataset

    data = random_dataset(tmp_path / "data")
    readonly = mount(readonly=True)
    recipe.write_text(json.dumps({"stage": 1, "max_steps": 2, "warmup_steps": 1, "batch_size": 2, "num_workers": 0,
                                  "adapter": {"memory_dim": 32, "attn_dim": 16, "attn_heads": 2}}))
    refused(run(capsys, "--recipe", recipe, "--data", data, "--output", readonly / "run", "--backbone", "tiny",
                train=True), "read-only")


# ---- eval and info -------------------------------------------------------------------------------


def test_eval_and_info_refuse_bad_input(tmp_path, capsys):
    refused(run(capsys, "eval", "--videos", tmp_path / "none", "--generated", tmp_path), "no such folder")
    refused(run(capsys, "eval", "--videos", tmp_path, "--generated", tmp_path, "--prompts", tmp_path / "p.json"),
            f"--prompts {tmp_path / 'p.json'}: no such file")
    (tmp_path / "p.json").write_text('{"clip": "piano",}')
    refused(run(capsys, "eval", "--videos", tmp_path, "--generated", tmp_path, "--prompts", tmp_path / "p.json"),
            "p.json: not valid JSON (line 1")
    refused(run(capsys, "info", "musicgen-huge"), "unknown preset")
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    refused(run(capsys, "info", tmp_path), "expected a JSON object")
    (tmp_path / "adapter_config.json").write_text('{"attn_heads": 0}')
    refused(run(capsys, "info", tmp_path), "attn_heads must be a whole number")


# ---- in a real process ---------------------------------------------------------------------------


def test_cli_in_a_real_process(tmp_path):
    """Exit status and stderr as a shell sees them: an argument error and a user error."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "out.wav"
    for args, needle in (([str(tmp_path / "x.mp4"), "--duration", "0"], "duration"),
                         ([str(tmp_path / "missing.mp4"), "-o", str(out)], "missing.mp4: no such file")):
        proc = subprocess.run([sys.executable, "-m", "vidmusician", "generate", *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


# A generate that writes its output, announces it in READY and sleeps before the rename:
# the test's SIGTERM arrives with the output's temporary file on disk.
SLOW_WRITE = """
import sys, time
from pathlib import Path
from vidmusician import audio_io, cli, muxing

real = audio_io.atomic_write

def slow(path, write, durable=False):
    def write_then_wait(tmp):
        write(tmp)
        Path(sys.argv[1]).write_text(str(tmp))
        time.sleep(120)
    return real(path, write_then_wait, durable)

audio_io.atomic_write = muxing.atomic_write = slow  # a .wav output, a video one
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("suffix", [".wav", ".mp4"])
def test_sigterm_while_writing_leaves_no_partial_file(clip, tmp_path, suffix):
    """What `kill` sends: the output being written is removed, exit status 143, one line."""
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(REPO))
    ready, out = tmp_path / "ready", tmp_path / "out" / f"scored{suffix}"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(ready), "generate", str(clip), *TINY, "-o",
                             str(out), "-q"], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "no write within 120 s"
        assert [p.name for p in out.parent.iterdir()] == [Path(ready.read_text()).name]  # the temporary file
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert list(out.parent.iterdir()) == []
    lines = err.strip().splitlines()
    assert lines[-1] == "vidmusician generate: stopped by SIGTERM" and "Traceback" not in err, err
