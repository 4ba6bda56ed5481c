"""vidmusician.testing: the test backbones and media, public for users' own tests, under their old names too."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import vidmusician.testing as testing

ROOT = Path(__file__).resolve().parent.parent


def test_the_old_names_are_the_same_modules():
    import media
    import vidmusician.learned_base
    import vidmusician.random_backbones
    from vidmusician import learned_base, random_backbones
    from vidmusician.testing import learned_base as new_learned, media as new_media, random_backbones as new_random

    assert random_backbones is vidmusician.random_backbones is new_random
    assert learned_base is vidmusician.learned_base is new_learned
    assert media is new_media
    assert vidmusician.random_backbones.tiny_musicgen is testing.tiny_musicgen


def test_the_package_example_runs(tmp_path, monkeypatch):
    """The example of the package's docstring, as a user would run it."""
    lines = testing.__doc__.split("Example::\n")[1].splitlines()
    block = itertools.takewhile(lambda line: not line or line.startswith("    "), lines)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile("\n".join(line[4:] for line in block), "example", "exec"), namespace)
    assert "vm" in namespace
    from vidmusician.video.reader import probe

    assert probe(tmp_path / "clip.mp4").duration > 1.9


def test_importing_the_package_loads_neither_torch_nor_pyav():
    code = "import sys, vidmusician.testing; print(sorted({'torch', 'av'} & set(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
