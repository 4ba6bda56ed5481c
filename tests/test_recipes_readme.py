"""recipes/README.md's commands: every one parses with the parser it names, the files it names exist,
and the practice run (prepare, both stages, generate) runs as written, shrunk to tiny sizes."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from vidmusician.cli import build_parser
from vidmusician.training.train import parse_args as train_args

REPO = Path(__file__).resolve().parents[1]
README = REPO / "recipes" / "README.md"


def commands(section: str | None = None) -> list[list[str]]:
    """The commands of the README's ```bash blocks (of one ``## `` section), continuation lines joined."""
    text = README.read_text()
    if section is not None:
        text = text[text.index(section):]
        text = text[:text.find("\n## ", 1)]
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(shlex.split(re.sub(r"\$[A-Z_]+", "0", line)))  # $NODE_RANK and such: a value
    return out


def program(cmd: list[str]) -> tuple[str, list[str]]:
    """('vidmusician' | 'train' | 'prepare' | 'accelerate' | 'script', the arguments) of a command."""
    head = cmd[0].removeprefix(".venv/bin/")
    if head == "vidmusician":
        return "vidmusician", cmd[1:]
    if head == "accelerate" and cmd[1] == "launch":
        return "accelerate", cmd[2:]
    if head == "python" and cmd[1:3] == ["-m", "vidmusician.training.train"]:
        return "train", cmd[3:]
    if head == "python" and cmd[1].endswith(".py"):
        return "script", cmd[1:]
    raise AssertionError(f"recipes/README.md: a command this test does not know: {shlex.join(cmd)}")


def check_parses(cmd: list[str]) -> None:
    from accelerate.commands.launch import launch_command_parser

    kind, args = program(cmd)
    try:
        if kind == "accelerate":
            launch = launch_command_parser().parse_args(args)
            config = launch.config_file
            assert config is None or (REPO / config).is_file(), config
            assert launch.module, shlex.join(cmd)
            kind, args = {"vidmusician.training.train": "train",
                          "vidmusician.training.prepare": "prepare"}[launch.training_script], launch.training_script_args
        if kind == "script":
            assert (REPO / args[0]).is_file(), args[0]
            return
        parsed = train_args(args) if kind == "train" else build_parser().parse_args(
            ["prepare", *args] if kind == "prepare" else args)
        if getattr(parsed, "recipe", None) is not None:  # `vidmusician train` and the trainer's module
            assert (REPO / parsed.recipe).is_file(), parsed.recipe
    except SystemExit as exc:
        raise AssertionError(f"recipes/README.md: `{shlex.join(cmd)}` does not parse") from exc


def test_every_command_of_the_recipes_readme_parses_and_names_files_that_exist():
    cmds = commands()
    kinds = {program(c)[0] for c in cmds}
    assert kinds == {"vidmusician", "accelerate", "script"}, kinds
    # Training is shown as `vidmusician train`, and for several machines under accelerate launch.
    assert [c[1] for c in cmds if program(c)[0] == "vidmusician"].count("train") >= 4, cmds
    for cmd in cmds:
        check_parses(cmd)


# What the practice run's numbers shrink to here: a test runs each command, not the training.
SHRUNK = {r"--practice \d+": "--practice 2", r"max_steps=\d+": "max_steps=1", r"warmup_steps=\d+": "warmup_steps=0",
          r"batch_size=\d+": "batch_size=1", r"eval_every=\d+": "eval_every=1", r"save_every=\d+": "save_every=1"}


def test_the_practice_run_runs_as_written(tmp_path, monkeypatch):
    """From a folder laid out as a checkout (its recipes), each command of section 0 in turn, in this
    process (a fresh interpreter's start-up would be most of the time)."""
    import torch

    from vidmusician.cli import main as cli_main

    practice = commands("## 0. A practice run")
    assert [(kind, args[0]) for kind, args in map(program, practice)] == [
        ("vidmusician", "prepare"), ("vidmusician", "train"), ("vidmusician", "train"), ("vidmusician", "generate")]
    assert all(c[0].startswith(".venv/bin/") for c in practice)  # copy-pasteable after `make setup`
    assert all((Path(sys.executable).parent / Path(c[0]).name).is_file() for c in practice)  # this venv's
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cmd in practice:
            line = shlex.join(cmd)
            for pattern, small in SHRUNK.items():
                line = re.sub(pattern, small, line)
            _, args = program(shlex.split(line))
            if args[0] == "generate":
                args += ["--duration", "1"]
            assert cli_main(args) == 0, line
    finally:
        torch.set_num_threads(threads)
    assert len(list((tmp_path / "practice" / "videos").glob("practice-*.mp4"))) == 2
    assert (tmp_path / "practice" / "stage2" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "practice" / "practice-000_scored.mp4").stat().st_size > 0


@pytest.mark.parametrize("count", [0, -1])
def test_practice_refuses_no_videos_and_a_folder_of_other_files(tmp_path, count, capsys):
    from vidmusician.cli import main

    assert main(["prepare", "--practice", str(count), str(tmp_path / "v"), str(tmp_path / "d")]) == 2
    assert "give the number of practice videos" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.mp4").write_bytes(b"")
    assert main(["prepare", "--practice", "2", str(tmp_path / "mine"), str(tmp_path / "d")]) == 2
    assert "holds other files (holiday.mp4, ...)" in capsys.readouterr().err


def test_practice_refuses_fewer_clips_than_the_folder_holds(tmp_path, capsys):
    """prepare takes every video of SRC: `--practice 2` on the 3 clips of an earlier `--practice 3`
    would prepare 3, so it is refused (in one line, with the fix) before anything is written."""
    from vidmusician.cli import main
    from vidmusician.training.practice import write_practice_videos

    folder = tmp_path / "v"
    folder.mkdir()
    clips = [folder / f"practice-{i:03d}.mp4" for i in range(3)]
    for clip in clips:
        clip.write_bytes(b"a clip")  # names are all the check reads
    assert main(["prepare", "--practice", "2", str(folder), str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "up to practice-002.mp4" in err and "give --practice 3" in err, err
    assert not (tmp_path / "d").exists() and sorted(folder.iterdir()) == clips
    assert write_practice_videos(folder, 3) == clips  # as many as asked: kept, none written again
    assert all(clip.read_bytes() == b"a clip" for clip in clips)


def test_practice_reruns_after_a_kill_mid_clip(tmp_path):
    """A SIGKILL while a clip is written leaves its hidden temporary file: the rerun removes it and writes the clip."""
    from vidmusician.training.practice import write_practice_videos

    folder = tmp_path / "videos"
    folder.mkdir()
    dead = folder / ".practice-000.mp4.999999999.140000.part"  # above any pid: its writer is gone
    dead.write_bytes(b"half a clip")
    busy = folder / f".practice-007.mp4.{os.getppid()}.140000.part"  # a live writer's: left alone
    busy.write_bytes(b"being written")
    assert write_practice_videos(folder, 1) == [folder / "practice-000.mp4"]
    assert sorted(p.name for p in folder.iterdir()) == [busy.name, "practice-000.mp4"]
    assert (folder / "practice-000.mp4").stat().st_size > 1000
