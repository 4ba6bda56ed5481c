"""`make setup` gives each checkout its own environment, running its own code.

A second checkout is set up the way a developer's branch or CI's clone is; it must import its
own package and run its own console script, and the checkout the tests run in must still run
its own code afterwards.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What scripts/setup.sh needs of a checkout.
CHECKOUT = ["scripts", "requirements", "vidmusician", "pyproject.toml", "setup.cfg", "README.md", "LICENSE", "Makefile"]


def imported_from(venv: Path) -> Path:
    """Where the venv's python imports vidmusician from, run from a folder that holds no package."""
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import vidmusician; print(vidmusician.__file__)"],
                         cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip()).parent


def script_python(venv: Path) -> str:
    return (venv / "bin" / "vidmusician").read_text().splitlines()[0]


@pytest.fixture(scope="module")
def own_venv():
    venv = REPO / ".venv"
    if venv.is_symlink() or not (venv / ".requirements").is_file():
        pytest.skip(".venv was not made by this checkout's `make setup`")
    return venv


@pytest.mark.timeout(900)  # a whole `make setup` (its own limit: 600 s)
def test_a_second_checkout_runs_its_own_code_and_leaves_this_one_alone(own_venv, tmp_path):
    other = tmp_path / "other-clone"
    other.mkdir()
    for name in CHECKOUT:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, other / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, other / name)
    # A .venv left by the earlier setup, a link into a venv that all clones shared: replaced,
    # and the shared venv is not touched.
    shared = tmp_path / "shared-venv"
    shared.mkdir()
    (shared / "marker").write_text("kept")
    (other / ".venv").symlink_to(shared)

    env = {**os.environ, "VIDMUSICIAN_SETUP_WARM": "0"}
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=other, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    assert not (other / ".venv").is_symlink() and (shared / "marker").read_text() == "kept"
    assert imported_from(other / ".venv") == other / "vidmusician"
    assert script_python(other / ".venv") == f"#!{other / '.venv' / 'bin' / 'python'}"
    # This checkout still runs its own code.
    assert imported_from(own_venv) == REPO / "vidmusician"
    assert script_python(own_venv) == f"#!{own_venv / 'bin' / 'python'}"


def test_the_wheel_holds_the_presets_and_the_recipes(tmp_path):
    """A `pip install` gets the adapter presets and the training recipes inside the package (links in
    the source tree: vidmusician/presets -> adapters/, vidmusician/recipes -> recipes/)."""
    import zipfile

    src = tmp_path / "src"  # a copy: a build writes build/ and *.egg-info beside the sources
    for name in CHECKOUT + ["adapters", "recipes"]:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    out = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(src)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "wheel").glob("vidmusician-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"vidmusician/presets/{p.name}" for p in (REPO / "adapters").glob("*.json")}
    shipped |= {f"vidmusician/recipes/{p.relative_to(REPO / 'recipes')}"
                for pattern in ("*.json", "accelerate/*.yaml") for p in (REPO / "recipes").glob(pattern)}
    assert len(shipped) >= 11 and shipped <= names, sorted(shipped - names)
