"""`vidmusician eval`'s inputs: generated files under `generate`'s names, prompts by name, too little music for a FAD."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from media import click_track, flash_video

from vidmusician.batch import output_path
from vidmusician.cli import main

SR = 32000


def _eval(argv, tmp_path):
    out = tmp_path / "report.json"
    code = main(["eval", *map(str, argv), "--out", str(out), "--encoder", "tiny", "--quiet"])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def _refused(argv, tmp_path, capsys, *needles) -> str:
    code, report = _eval(argv, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and report is None, err
    assert len(err.splitlines()) == 1 and err.startswith("vidmusician eval: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def _folders(tmp_path, videos=("clip",), generated=("clip.wav",), seconds=1.0):
    """Videos and generated click tracks under the given names; returns (videos, generated) folders."""
    v, g = tmp_path / "v", tmp_path / "g"
    v.mkdir(), g.mkdir()
    for name in videos:
        flash_video(v / f"{name}.mp4", [0.5], seconds)
    for name in generated:
        sf.write(g / name, click_track([0.5], seconds, SR), SR)
    return v, g


# --------------------------------------------------------------------------- #
# Generated files as `vidmusician generate` names them


def test_generate_output_names_match_their_videos(tmp_path):
    # The names `vidmusician generate videos/ -o scored/` writes, from the function it names them with.
    names = [output_path(f"{n}.mp4", ".", ".wav").name for n in ("a", "b")]
    assert names == ["a_music.wav", "b_music.wav"]
    v, g = _folders(tmp_path, ("a", "b", "c"), names)
    code, report = _eval(["--videos", v, "--generated", g], tmp_path)
    assert code == 0
    assert [(f["name"], f["generated"].rsplit("/", 1)[-1]) for f in report["files"]] == list(zip("ab", names))
    assert report["unmatched"] == {"no_generated": ["c"]}


def test_a_video_with_both_names_is_refused(tmp_path, capsys):
    v, g = _folders(tmp_path, ("clip",), ("clip.wav", "clip_music.flac"))
    _refused(["--videos", v, "--generated", g], tmp_path, capsys, "clip.* and clip_music.*", "video clip",
             "keep one")


def test_a_file_that_names_two_videos_is_refused(tmp_path, capsys):
    # x_music.wav is x_music.mp4's by its stem and x.mp4's by generate's naming.
    v, g = _folders(tmp_path, ("x", "x_music"), ("x_music.wav",))
    _refused(["--videos", v, "--generated", g], tmp_path, capsys, "x_music.wav", "matches both", "rename")


def test_several_formats_of_one_name_still_pick_the_lossless_one(tmp_path):
    v, g = _folders(tmp_path, ("clip",), ("clip_music.mp3", "clip_music.wav"))
    code, report = _eval(["--videos", v, "--generated", g], tmp_path)
    assert code == 0 and report["files"][0]["generated"].endswith("clip_music.wav")


# --------------------------------------------------------------------------- #
# --prompts keyed by the video's name


class ConstantClap:
    """A stand-in for the CLAP model: every audio and text embeds to one vector (score 1)."""

    sample_rate = 48000

    def __call__(self, audio, sample_rate):
        return np.ones((1, 4))

    def embed_text(self, texts):
        return np.ones((len(texts), 4))


def _text_scores(tmp_path, prompts: dict, log=None) -> dict:
    from vidmusician.evaluation.embedders import read_prompts
    from vidmusician.evaluation.evaluate import evaluate

    v, g = _folders(tmp_path, ("c", "d"), ("c_music.wav", "d.wav"))
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    report = evaluate(v, g, encoder="tiny", prompts=read_prompts(tmp_path / "prompts.json"),
                      text_embedder=ConstantClap(), log=log)
    return {c.name: c.scores["clap_text"] for c in report.clips}


@pytest.mark.parametrize("key", ["c", "c.mp4", "c_music.wav"])
def test_prompts_by_the_videos_stem_or_file_name(tmp_path, key):
    scores = _text_scores(tmp_path, {key: "calm piano"})
    assert scores["c"] == pytest.approx(1.0) and np.isnan(scores["d"])


def test_prompts_that_name_no_video_are_refused_when_none_does_and_left_out_with_a_line_else(tmp_path):
    from vidmusician.errors import ConfigError

    with pytest.raises(ConfigError) as err:  # a file keyed some other way
        _text_scores(tmp_path, {"e.mp4": "drums", "c.wav": "bass"})
    message = str(err.value)
    assert "\n" not in message and f"--prompts {tmp_path / 'prompts.json'}:" in message
    assert "'e.mp4', 'c.wav' name no video" in message and "keyed by the video's name" in message
    lines = []  # one file for a whole test set, scored a folder at a time
    (tmp_path / "subset").mkdir()
    scores = _text_scores(tmp_path / "subset", {"c.mp4": "calm piano", "e.mp4": "drums", "c.wav": "bass"},
                          log=lines.append)
    assert scores["c"] == pytest.approx(1.0) and np.isnan(scores["d"])
    assert [line for line in lines if "prompts" in line] == [
        f"warning: --prompts {tmp_path / 'subset' / 'prompts.json'}: 'e.mp4', 'c.wav' name no video in "
        f"{tmp_path / 'subset' / 'v'}; left out"]


def test_two_prompts_for_one_clip_are_refused(tmp_path):
    from vidmusician.errors import ConfigError

    with pytest.raises(ConfigError, match="'c' and 'c.mp4' both name the clip c"):
        _text_scores(tmp_path, {"c": "calm piano", "c.mp4": "drums"})


# --------------------------------------------------------------------------- #
# Too little music for a Fréchet distance


def per_second_embedder(audio, sample_rate):
    """One row per whole second of audio, at least one (as CLAP gives one per 10 s), of no known count."""
    rows = max(1, len(audio) // sample_rate)
    return np.stack([np.full(rows, float(np.mean(audio**2))), np.arange(rows, dtype=float)], axis=1)


def test_too_few_embeddings_name_the_metric_the_set_and_the_fix(tmp_path, capsys):
    v, g = _folders(tmp_path, ("c",), ("c_music.wav",), seconds=2.5)  # generated: 2 rows
    reference = tmp_path / "r"
    reference.mkdir()
    sf.write(reference / "c.wav", click_track([0.5], 1.0, SR), SR)  # 1 row
    err = _refused(["--videos", v, "--generated", g, "--reference", reference, "--embedder",
                    "test_eval_inputs:per_second_embedder"], tmp_path, capsys,
                   "frechet_distance[test_eval_inputs:per_second_embedder]: the reference music gives 1 embedding,",
                   "needs at least 2 per set", "evaluate more clips or longer ones")
    assert "generated" not in err


def test_music_generated_beside_its_videos(tmp_path):
    # `vidmusician generate v/ -o v/`: a.mp4 and a_music.wav in one folder; the video is not its own music.
    v, _ = _folders(tmp_path, ("a",), ())
    sf.write(output_path(v / "a.mp4", v, ".wav"), click_track([0.5], 1.0, SR), SR)
    code, report = _eval(["--videos", v, "--generated", v], tmp_path)
    assert code == 0 and report["files"][0]["generated"].endswith("a_music.wav")


# --------------------------------------------------------------------------- #
# Reference videos without a soundtrack (`--reference videos/`)


def frame_embedder(audio, sample_rate):
    """Per-50 ms frame (log energy, time): a stand-in for a real audio embedder."""
    hop = sample_rate // 20
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    return np.stack([np.log(np.mean(frames**2, axis=1) + 1e-8), np.arange(len(frames)) / 20], axis=1)


def _videos_as_reference(tmp_path, with_sound=("a",), silent=("b",)):
    """Videos, some with a click soundtrack and some without, and a generated click track for each."""
    v, g = _folders(tmp_path, (), [f"{n}.wav" for n in (*with_sound, *silent)], seconds=2.0)
    for name in with_sound:
        flash_video(v / f"{name}.mp4", [0.5], 2.0, audio=click_track([0.5, 1.5], 2.0, SR))
    for name in silent:
        flash_video(v / f"{name}.mp4", [0.5], 2.0)
    return v, g


def test_a_reference_video_without_audio_is_scored_without_a_reference_and_the_rest_with_one(tmp_path, capsys):
    v, g = _videos_as_reference(tmp_path, ("a", "c"), ("b",))
    out = tmp_path / "report.json"
    code = main(["eval", "--videos", str(v), "--generated", str(g), "--reference", str(v), "--encoder", "tiny",
                 "--embedder", "test_eval_inputs:frame_embedder", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads(out.read_text())
    scores = {f["name"]: f for f in report["files"]}
    assert sorted(scores) == ["a", "b", "c"]
    assert scores["a"]["bcs"] is not None and scores["c"]["bcs"] is not None and scores["b"]["bcs"] is None
    assert scores["b"]["beat_alignment"] is not None  # the video-only metric still scores it
    assert report["unmatched"] == {"no_generated": [], "no_reference": [], "no_reference_audio": ["b"]}
    assert report["frechet_distance"]["test_eval_inputs:frame_embedder"] is not None  # over a and c
    assert "warning: 1 video(s) with a reference file that has no audio stream, scored without one: b\n" in err


def test_no_reference_with_audio_left_is_one_line(tmp_path, capsys):
    v, g = _videos_as_reference(tmp_path, (), ("b", "d"))
    _refused(["--videos", v, "--generated", g, "--reference", v], tmp_path, capsys,
             f"{v}: no reference file has an audio stream (b, d)", "leave out --reference")
