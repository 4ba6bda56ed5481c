"""Every command in the README and the pages it links to runs as written, as far as a test can tell.

A user copies these commands first; a renamed flag or subcommand must fail here, not on their
machine. Each command of a ```bash block is checked by the program it names: `vidmusician SUB`
against that subcommand's parser, `python -m vidmusician.training.train` against the trainer's,
`accelerate launch` against Accelerate's and then the module it launches, `make` against the
Makefile's targets, a benchmark script against the flags its source defines; files of the
repository a command names must exist. The parsers are built in this process, so the whole
check takes about a second. The install check of "3. Score a video" runs as written, in a
temporary folder. Relative links must reach a file, and an anchor a heading of it.
"""

from __future__ import annotations

import ast
import os
import contextlib
import io
import re
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "recipes/README.md", "benchmarks/README.md",
        *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]
# A section holding this marker shows a command of a change still to be merged: its commands
# are checked, and skipped (not failed) while the code does not take them yet.
PENDING = "<!-- batch:"
# Folders of this repository: an argument under one of them names a file that must exist.
REPO_DIRS = ("recipes/", "benchmarks/", "tests/", "scripts/", "adapters/", "docs/", "requirements/")
OPTION = re.compile(r"--?[A-Za-z][\w-]*")


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    argv: tuple[str, ...]
    pending: bool

    def __str__(self):
        return f"{self.doc}:{self.line}: {shlex.join(self.argv)}"


def blocks(text: str, language: str) -> list[tuple[int, int, str]]:
    """(line number of the first line, its offset in `text`, body) of each fenced block in `language`."""
    fence = re.compile(rf"^```{language}\n(.*?)^```", re.M | re.S)
    return [(text.count("\n", 0, m.start(1)) + 1, m.start(1), m.group(1)) for m in fence.finditer(text)]


def section_of(text: str, offset: int) -> str:
    """The text of the `## ` section around character `offset` (which may be its heading's)."""
    start = text.rfind("\n## ", 0, offset + len("## "))
    end = text.find("\n## ", offset)
    return text[start + 1:end if end >= 0 else len(text)]


def doc_commands(doc: str) -> list[Command]:
    """The commands of a document's ```bash blocks: continuation lines joined, comments dropped."""
    text = (REPO / doc).read_text()
    out = []
    for first, offset, body in blocks(text, "bash"):
        pending = PENDING in section_of(text, offset)
        lines = body.split("\n")
        i = 0
        while i < len(lines):
            start, logical = i, lines[i]
            while logical.endswith("\\") and i + 1 < len(lines):
                i += 1
                logical = logical[:-1] + " " + lines[i]
            i += 1
            argv = shlex.split(logical, comments=True)
            if argv:
                out.append(Command(doc, first + start, tuple(argv), pending))
    return out


def all_commands() -> list[Command]:
    return [c for doc in DOCS for c in doc_commands(doc)]


# --- the parsers, built in this process ---------------------------------------------------------

class ParseError(AssertionError):
    pass


def parsed(parse, args: list[str]):
    """`parse(args)`, with argparse's exit turned into ParseError carrying its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse(args)
    except SystemExit as exc:
        raise ParseError(err.getvalue().strip() or f"exit {exc.code}") from None


@lru_cache(maxsize=None)
def cli_parser():
    from vidmusician.cli import build_parser

    return build_parser()


def test_the_subcommand_summaries_read_alike():
    """`vidmusician --help` lists every subcommand in one voice: lowercase, no closing period."""
    import importlib

    from vidmusician.cli import COMMANDS

    for name in COMMANDS:
        summary = importlib.import_module(f"vidmusician.cli.commands.{name}").HELP
        assert summary[0].islower() and not summary.endswith("."), (name, summary)


def test_every_option_names_its_value_readably():
    """Every --help shows what an option takes (`--window S`, `--backbone NAME|PATH|tiny`), as `vidmusician
    generate --help` does, not argparse's default placeholder, the option's name in capitals (`--window WINDOW`)."""
    from vidmusician.training.train import build_parser

    parsers = {f"vidmusician {name}": parser for name, parser in subcommands().items()}
    parsers["python -m vidmusician.training.train"] = build_parser()
    defaults = [(what, a.option_strings[-1]) for what, parser in parsers.items() for a in parser._actions
                if a.option_strings and a.nargs != 0 and a.metavar is None and a.choices is None]
    assert not defaults, defaults


def subcommands() -> dict:
    import argparse

    parser = cli_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@lru_cache(maxsize=None)
def train_help() -> str:
    from vidmusician.training.train import parse_args

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            parse_args(["--help"])
    except SystemExit:
        pass
    return out.getvalue()


def options_in(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", help_text))


def used_options(args) -> list[str]:
    return [a.split("=", 1)[0] for a in args if OPTION.fullmatch(a.split("=", 1)[0])]


def expect_options(args, help_text: str, what: str) -> None:
    """Every option the command uses is spelled out in `what`'s --help (no prefix abbreviations)."""
    unknown = [o for o in used_options(args) if o not in options_in(help_text)]
    if unknown:
        raise ParseError(f"{what} has no option {', '.join(unknown)}")


def check_vidmusician(args: list[str]) -> None:
    commands = subcommands()
    if not args or args[0] not in commands:
        raise ParseError(f"vidmusician has no subcommand {args[0] if args else '(none)'!r}: "
                         f"it has {', '.join(commands)}")
    expect_options(args[1:], commands[args[0]].format_help(), f"vidmusician {args[0]}")
    parsed(cli_parser().parse_args, args)


def check_train(args: list[str]) -> None:
    from vidmusician.training.train import parse_args

    expect_options(args, train_help(), "python -m vidmusician.training.train")
    parsed(parse_args, args)


def check_module(module: str, args: list[str]) -> None:
    if module == "vidmusician.training.train":
        check_train(args)
    elif module == "vidmusician.training.prepare":  # a worker of `vidmusician prepare`
        check_vidmusician(["prepare", *args])
    elif module == "vidmusician":
        check_vidmusician(args)
    else:
        raise ParseError(f"-m {module}: not a module this test knows how to check")


def check_accelerate(args: list[str]) -> None:
    from accelerate.commands.launch import launch_command_parser

    if args[:1] != ["launch"]:
        raise ParseError("only `accelerate launch` is expected")
    parser = launch_command_parser()
    launch = parsed(parser.parse_args, args[1:])
    own = args[1:len(args) - len(launch.training_script_args) - 1]  # accelerate's part
    # Accelerate's help hides options by the process's own argv: its option table is the truth.
    expect_options(own, " ".join(parser._option_string_actions), "accelerate launch")
    if launch.config_file is not None and not (REPO / launch.config_file).is_file():
        raise ParseError(f"--config_file {launch.config_file}: no such file in the repository")
    if not launch.module:
        raise ParseError("accelerate launch without -m: the project launches modules")
    check_module(launch.training_script, launch.training_script_args)


def check_script(script: str, args: list[str]) -> None:
    path = REPO / script
    if not path.is_file():
        raise ParseError(f"{script}: no such file")
    source = path.read_text()
    unknown = [o for o in used_options(args) if f'"{o}"' not in source]
    if unknown:
        raise ParseError(f"{script} defines no option {', '.join(unknown)}")


@lru_cache(maxsize=None)
def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), re.M))


def check(argv) -> None:
    """Raises ParseError saying what is wrong with one command."""
    argv = [re.sub(r"\$\{?[A-Z_][A-Z0-9_]*\}?", "0", a) for a in argv]  # $NODE_RANK: the user's value
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):  # OMP_NUM_THREADS=1 ...
        argv = argv[1:]
    head, args = argv[0], argv[1:]
    program = head.removeprefix(".venv/bin/")
    if head != program and not (Path(sys.executable).parent / program).is_file():
        raise ParseError(f"{head}: `make setup` does not install it")
    for arg in args:
        value = arg.split("=", 1)[-1]
        if value.startswith(REPO_DIRS) and not (REPO / value).exists():
            raise ParseError(f"{value}: no such file in the repository")
    if program == "make":
        missing = [t for t in args if t not in make_targets()]
        if missing or not args:
            raise ParseError(f"the Makefile has no target {missing or '(none given)'}")
    elif program == "vidmusician":
        check_vidmusician(args)
    elif program == "accelerate":
        check_accelerate(args)
    elif program in ("python", "python3"):
        if args[:1] == ["-c"]:
            compile(args[1], "<python -c>", "exec")
        elif args[:1] == ["-m"]:
            check_module(args[1], args[2:])
        else:
            check_script(args[0], args[1:])
    else:
        raise ParseError(f"{program}: a program this test does not know how to check")


# --- the tests ---------------------------------------------------------------------------------

COMMANDS = all_commands()


def test_the_documents_hold_the_commands_a_user_needs_in_order():
    readme = (REPO / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", readme, re.M)
    assert sections[:3] == ["1. Setup", "2. Test", "3. Score a video"], sections
    first = [c.argv for c in COMMANDS if c.doc == "README.md"][:4]
    assert first[0] == ("make", "setup") and first[1] == ("make", "test"), first
    assert first[3][:2] == (".venv/bin/vidmusician", "generate"), first
    assert "## License" in readme
    programs = {check_kind(c) for c in COMMANDS}
    assert {"make", "vidmusician", "accelerate", "python script", "python -c"} <= programs, programs
    # Training as every other command: `vidmusician train` (accelerate launch for several machines).
    assert any(c.argv[:2] == (".venv/bin/vidmusician", "train") for c in COMMANDS if c.doc == "README.md")


def check_kind(command: Command) -> str:
    argv = [a for a in command.argv if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", a)]
    program = argv[0].removeprefix(".venv/bin/")
    if program.startswith("python"):
        return {"-c": "python -c", "-m": "python -m"}.get(argv[1], "python script")
    return program


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.doc}:{c.line}" for c in COMMANDS])
def test_every_command_names_what_exists(command):
    try:
        check(command.argv)
    except ParseError as exc:
        if command.pending:
            pytest.skip(f"waits for the change its section's {PENDING!r} marker names: {exc}")
        raise AssertionError(f"{command}\n  {exc}") from None


def test_the_check_fails_on_a_misspelled_flag_a_missing_subcommand_file_or_target():
    """The checks themselves: each of these must be refused."""
    wrong = [
        ["vidmusician", "generate", "clip.mp4", "--sead", "0"],  # misspelled flag
        ["vidmusician", "generate", "clip.mp4", "--se", "0"],  # an abbreviation argparse would take
        ["vidmusician", "compose", "clip.mp4"],  # no such subcommand
        ["vidmusician", "generate"],  # a required argument missing
        [".venv/bin/vidmusician", "eval", "--videos", "v/", "--generated", "g/", "[--out", "r.json]"],
        ["python", "-m", "vidmusician.training.train", "--recipe", "recipes/stage1_semantic.json",
         "--data", "d/", "--output", "o/", "--lr", "1e-3"],
        ["python", "-m", "vidmusician.training.train", "--recipe", "recipes/stage3.json", "--data", "d/",
         "--output", "o/"],
        ["accelerate", "launch", "--config_file", "recipes/accelerate/one_gpu.yaml", "-m",
         "vidmusician.training.train", "--recipe", "recipes/stage1_semantic.json", "--data", "d/", "--output", "o/"],
        ["accelerate", "launch", "--num_proceses", "2", "-m", "vidmusician.training.prepare", "v/", "d/"],
        ["accelerate", "launch", "-m", "vidmusician.training.prepare", "v/", "d/", "--windw", "4"],
        ["python", "benchmarks/overhead.py", "--secs", "4"],
        ["python", "benchmarks/overheads.py"],
        ["make", "install"],
        ["pip", "install", "vidmusician"],
    ]
    for argv in wrong:
        with pytest.raises(ParseError):
            check(argv)
    with pytest.raises(SyntaxError):
        check(["python", "-c", "import sys; print(sys.path"])
    check(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/verify.py", "--sources", "100"])  # and a right one


def test_python_snippets_are_python():
    for doc in DOCS:
        for line, _, body in blocks((REPO / doc).read_text(), "python"):
            try:
                ast.parse(body)
            except SyntaxError as exc:
                raise AssertionError(f"{doc}:{line + (exc.lineno or 1) - 1}: {exc.msg}") from None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_reach_a_file_and_a_heading():
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (REPO / doc).parent / path if path else REPO / doc
            assert file.exists(), f"{doc}: link to {target}: no such file"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                assert anchor in {slug(h) for h in headings}, f"{doc}: link to {target}: no such heading"


def test_the_install_check_runs_as_written(tmp_path, monkeypatch):
    """The first block of "3. Score a video", in a folder laid out as a checkout (its tests/),
    in this process: a fresh interpreter's start-up would be most of the time."""
    import av

    from vidmusician.cli import main

    readme = (REPO / "README.md").read_text()
    section = section_of(readme, readme.index("## 3. Score a video"))
    make_clip, generate = [c.argv for c in doc_commands("README.md") if c.argv[0] != "make"][:2]
    assert shlex.join(make_clip) in shlex.join(shlex.split(blocks(section, "bash")[0][2]))
    assert make_clip[:2] == (".venv/bin/python", "-c") and generate[:2] == (".venv/bin/vidmusician", "generate")
    (tmp_path / "tests").symlink_to(REPO / "tests")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the snippet puts tests/ on it
    exec(compile(make_clip[2], "<README install check>", "exec"), {"__name__": "__main__"})
    assert main(list(generate[1:])) == 0
    out = Path(generate[generate.index("-o") + 1])
    with av.open(str(out)) as container:
        assert container.streams.video and container.streams.audio
        assert container.duration / av.time_base == pytest.approx(3.0, abs=0.1)
