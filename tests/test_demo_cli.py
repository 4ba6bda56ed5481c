"""`vidmusician demo` before its page serves: a bad option or seed is one line; the examples it offers."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from vidmusician import cli
from vidmusician.errors import VidMusicianError
from vidmusician.video.reader import probe


@pytest.mark.parametrize("text, seed", [("", None), ("  ", None), (None, None), ("12", 12), (" 7 ", 7)])
def test_seed_field_empty_means_random(text, seed):
    from vidmusician.demo.app import _seed

    assert _seed(text) == seed


@pytest.mark.parametrize("text", ["abc", "1.5", "-1", str(2 ** 63)])
def test_seed_field_not_a_seed_is_one_line(text):
    from vidmusician.demo.app import _seed

    with pytest.raises(VidMusicianError, match="Seed: .* is not a whole number from 0 to") as info:
        _seed(text)
    assert "\n" not in str(info.value)


def test_cli_adapter_for_another_backbone_is_one_line(tmp_path, capsys):
    from conftest import tiny_config
    from vidmusician.random_backbones import tiny_musicgen
    from vidmusician.model import attach_adapters

    musicgen = tiny_musicgen(dim=64)
    attach_adapters(musicgen, tiny_config(musicgen)).save_pretrained(tmp_path / "adapter")
    rc = cli.main(["demo", "--adapter", str(tmp_path / "adapter"), "--backbone", "tiny", "--port", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not match" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, match", [
    (["--port", "0"], "--port"),
    (["--max-duration", "0"], "--max-duration"),
])
def test_cli_bad_option_is_one_line(argv, match, capsys):
    assert cli.main(["demo", "--backbone", "tiny", "--encoder", "tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_cli_port_in_use_is_one_line_before_loading_anything(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A backbone that cannot load: the port is checked first.
        rc = cli.main(["demo", "--backbone", "/nonexistent", "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"vidmusician demo: error: --port {port}: already in use on 127.0.0.1; " \
                                      f"pick another port"


def test_cli_host_not_of_this_machine_is_one_line(capsys):
    assert cli.main(["demo", "--backbone", "/nonexistent", "--host", "192.0.2.1", "--port", "8999"]) == 2
    err = capsys.readouterr().err
    assert "--host 192.0.2.1 --port 8999: cannot listen there" in err and len(err.strip().splitlines()) == 1


def test_cli_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    assert cli.main(["demo", "--backbone", "tiny", "--encoder", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "needs gradio" in err and "vidmusician[demo]" in err and len(err.strip().splitlines()) == 1


def test_examples_have_visual_beats(tmp_path):
    from vidmusician.demo import write_examples
    from vidmusician.demo.examples import EXAMPLES

    rows = write_examples(tmp_path)
    assert [Path(v).name for v, _ in rows] == [f"{stem}.mp4" for stem, *_ in EXAMPLES]
    from vidmusician.evaluation.beats import visual_rhythm

    stem, bpm, seconds, _ = EXAMPLES[1]
    info = probe(rows[1][0])
    assert abs(info.duration - seconds) < 0.05
    beats = visual_rhythm(rows[1][0], encoder="tiny").beats
    # The square jumps every 60 / bpm seconds; the visual beats are those jumps.
    expected = np.arange(1, int(seconds * bpm / 60)) * 60 / bpm
    assert len(beats) >= len(expected) - 2, (beats, expected)  # peak picking may skip one near an edge
    assert np.abs(beats[:, None] - expected[None, :]).min(axis=1).max() < 0.05, (beats, expected)
