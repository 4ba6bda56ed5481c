"""`vidmusician eval` end to end on flash videos and click tracks with known timing.

Four clips, each a case of the issue, with the generated music a regular click
train (so its beats are the clicks), the video flashing at known frames, and
the reference music (the videos' own soundtracks) clicking in known 1-second
bins. 8 s clips, bins 0..7.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from media import click_track, flash_video

from vidmusician.evaluation import frechet, metrics
from vidmusician.cli import main
from vidmusician.evaluation.beats import load_audio, music_rhythm

DURATION = 8.0
SR = 32000
# Onset envelope hop at D2M-GAN's 22.05 kHz / 512.
HOP = 512 / 22050


def mid_hop(times):
    """Moves each time to the middle of its onset-envelope frame.

    D2M-GAN's 1-frame peak-picking windows can miss a click whose energy is
    split evenly between two envelope frames; centering keeps these tests about
    our code, not that quirk of the reference settings.
    """
    return [(round(t / HOP) + 0.5) * HOP for t in times]


def train(n):
    """n clicks every 0.6 s from 0.52 s: on the 25 fps frame grid (0.6 s = 15 frames)."""
    return [round(0.52 + 0.6 * k, 2) for k in range(n)]


# name: (generated clicks, flash times, reference clicks, expected scores)
CASES = {
    # Everything lines up: generated = reference = flashes; bins 0..7 all set.
    "perfect": (train(13), train(13), train(13),
                dict(beat_alignment=1.0, bcs=1.0, bhs=1.0, loris_cover=1.0, loris_hit=1.0, loris_f1=1.0)),
    # Flashes on every other beat: 4 of 8 beats aligned, the rest 0.6 s (5 sigma) away.
    # Generated bins {0..4}, reference bins {1, 3, 5, 6}: 2 hits.
    "half": (train(8), train(8)[::2], [1.5, 3.5, 5.5, 6.5],
             dict(beat_alignment=0.5, bcs=5 / 4, bhs=2 / 4, loris_cover=2 / 5, loris_hit=2 / 4, loris_f1=4 / 9)),
    # Flashes only after the music stops (>= 1.4 s from any beat); reference bins
    # {4..7} vs generated bins {0..3}: no bin in common.
    "none": (train(6), [5.0, 6.0, 7.0], [4.5, 5.5, 6.5, 7.5],
             dict(beat_alignment=0.0, bcs=4 / 4, bhs=0.0, loris_cover=0.0, loris_hit=0.0, loris_f1=0.0)),
    # Generated onsets in all 8 bins, the reference in 2 of them.
    "more": (train(13), train(13), [0.5, 2.5],
             dict(beat_alignment=1.0, bcs=8 / 2, bhs=1.0, loris_cover=2 / 8, loris_hit=1.0, loris_f1=0.4)),
}
SIGMA = 3 / 25  # the default --ba-sigma: Bailando's 3 frames, at the 25 fps visual-beat rate


def detected(t):
    """Where the onset detector puts a click made at ``mid_hop(t)``: the next envelope frame.

    The envelope frame f is centered at f * HOP (librosa's centered STFT); a click
    half a hop after a frame center first shows in the spectral flux of the
    following frame.
    """
    return (round(t / HOP) + 1) * HOP


def beat_alignment_by_hand(music, flashes):
    """Bailando's formula on the predicted beat times, written out independently."""
    d = [min(abs(detected(b) - v) for v in flashes) for b in music]
    return float(np.mean([math.exp(-x * x / (2 * SIGMA * SIGMA)) for x in d]))


def toy_embedder(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-50 ms frame (log energy, peak): a stand-in for a real audio embedder."""
    hop = sample_rate // 20
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    return np.stack([np.log(np.mean(frames**2, axis=1) + 1e-8), np.abs(frames).max(axis=1)], axis=1)


toy_embedder.sample_rate = 16000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    videos, generated = root / "videos", root / "generated"
    videos.mkdir()
    generated.mkdir()
    for name, (gen, flashes, ref, _) in CASES.items():
        flash_video(videos / f"{name}.mp4", flashes, DURATION, audio=click_track(mid_hop(ref), DURATION, SR))
        sf.write(generated / f"{name}.wav", click_track(mid_hop(gen), DURATION, SR), SR)
    flash_video(videos / "orphan.mp4", [1.0], 2.0)  # no generated file
    out, plots = root / "report.json", root / "plots"
    argv = ["eval", "--videos", str(videos), "--generated", str(generated), "--reference", str(videos),
            "--out", str(out), "--plot", str(plots), "--encoder", "tiny", "--embedder", "test_eval_cli:toy_embedder"]
    return root, main(argv), json.loads(out.read_text()), plots


def test_exit_code_and_files(run):
    _, code, report, plots = run
    assert code == 0
    assert [f["name"] for f in report["files"]] == sorted(CASES)
    assert report["unmatched"] == {"no_generated": ["orphan"], "no_reference": [], "no_reference_audio": []}
    assert report["settings"]["ba_sigma"] == pytest.approx(SIGMA)
    assert report["settings"]["ba_sigma_bailando"] == pytest.approx(3 / 60)
    assert report["settings"]["d2m_onsets"]["pad_mode"] == report["settings"]["loris_onsets"]["pad_mode"] == "reflect"
    assert report["settings"]["visual"]["floor"] == 0.02


@pytest.mark.parametrize("name", sorted(CASES))
def test_per_file_metrics_equal_hand_values(run, name):
    _, _, report, _ = run
    row = next(f for f in report["files"] if f["name"] == name)
    expected = CASES[name][3]
    for key in ("bcs", "bhs", "loris_cover", "loris_hit", "loris_f1"):
        assert row[key] == pytest.approx(expected[key], abs=1e-12), key
    gen, flashes, ref, _ = CASES[name]
    # The nominal value, and the exact one given where the detector puts each beat
    # (up to 1.5 hops after the click: BA 0.98 instead of 1 for "perfect").
    assert row["beat_alignment"] == pytest.approx(expected["beat_alignment"], abs=0.05)
    assert row["beat_alignment"] == pytest.approx(beat_alignment_by_hand(gen, flashes), abs=1e-9)
    assert row["counts"] == {"visual_beats": len(flashes), "music_beats": len(gen),
                             "generated_onsets": len(gen), "reference_onsets": len(ref),
                             "generated_onsets_loris": len(gen), "reference_onsets_loris": len(ref)}


def test_means(run):
    _, _, report, _ = run
    cases = [CASES[n][3] for n in sorted(CASES)]
    mean = report["mean"]
    for key in ("bcs", "bhs", "loris_cover", "loris_hit"):
        assert mean[key] == pytest.approx(np.mean([c[key] for c in cases]), abs=1e-12)
    # LORIS reports F1 of the mean cover and hit.
    assert mean["loris_f1"] == pytest.approx(metrics.f1_score(mean["loris_cover"], mean["loris_hit"]), abs=1e-12)
    by_hand = [beat_alignment_by_hand(CASES[n][0], CASES[n][1]) for n in sorted(CASES)]
    assert mean["beat_alignment"] == pytest.approx(np.mean(by_hand), abs=1e-9)


def test_frechet_distance_uses_the_embedder(run):
    root, _, report, _ = run
    names = sorted(CASES)
    gen = [load_audio(root / "generated" / f"{n}.wav", 16000) for n in names]
    ref = [load_audio(root / "videos" / f"{n}.mp4", 16000) for n in names]
    expected = frechet.frechet_audio_distance(gen, ref, 16000, toy_embedder)
    assert report["frechet_distance"] == {"test_eval_cli:toy_embedder": pytest.approx(expected, rel=1e-9)}
    assert expected > 0


def test_plots_are_pngs(run):
    _, _, report, plots = run
    for name in CASES:
        data = (plots / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(plots.glob("*.tmp")) and not (plots / "orphan.png").exists()


def test_table_on_stdout_and_feature_cache(tmp_path, capsys):
    videos, generated = tmp_path / "v", tmp_path / "g"
    videos.mkdir()
    generated.mkdir()
    flash_video(videos / "clip.mp4", [0.52, 1.12], 2.0)
    sf.write(generated / "clip.wav", click_track(mid_hop([0.52, 1.12]), 2.0, SR), SR)
    cache = tmp_path / "cache"
    argv = ["eval", "--videos", str(videos), "--generated", str(generated), "--encoder", "tiny", "--quiet",
            "--cache", str(cache)]
    assert main(argv) == 0
    assert len(list(cache.glob("*.safetensors"))) == 1  # the video's features, for the next run
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "beat_alignment", "bcs", "bhs", "loris_cover", "loris_hit", "loris_f1"]
    clip = next(line for line in lines if line.startswith("clip"))
    # Without a reference only the beat alignment is defined.
    assert clip.split()[2:] == ["-"] * 5
    assert any(line.startswith("mean") for line in lines)


def test_quiet_leaves_out_the_progress_but_says_which_videos_were_skipped(tmp_path, capsys):
    videos, generated = tmp_path / "v", tmp_path / "g"
    videos.mkdir()
    generated.mkdir()
    for name in ("clip", "other"):
        flash_video(videos / f"{name}.mp4", [0.52, 1.12], 2.0)
    sf.write(generated / "clip.wav", click_track(mid_hop([0.52, 1.12]), 2.0, SR), SR)  # none for "other"
    argv = ["eval", "--videos", str(videos), "--generated", str(generated), "--encoder", "tiny"]
    assert main(argv + ["-q", "-o", str(tmp_path / "r.json")]) == 0  # the short forms, as in generate
    assert capsys.readouterr().err == "vidmusician eval: warning: 1 video(s) skipped, no generated file: other\n"
    assert main(argv) == 0  # without --quiet: the same line, then the progress
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "vidmusician eval: warning: 1 video(s) skipped, no generated file: other"
    assert any(line.startswith("clip: beat_alignment=") for line in err[1:])


# --------------------------------------------------------------------------- #
# Bad input: one line on stderr, exit 2, no report file


def _bad(argv, tmp_path, capsys, *needles):
    out = tmp_path / "report.json"
    assert main(["eval", *argv, "--out", str(out), "--encoder", "tiny", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vidmusician eval: error: ")
    for needle in needles:
        assert needle in err
    assert not out.exists() and not list(tmp_path.glob(".report.json*"))


def test_missing_folder(tmp_path, capsys):
    _bad(["--videos", str(tmp_path / "nope"), "--generated", str(tmp_path)], tmp_path, capsys, "nope", "no such folder")


def test_output_that_is_a_folder(tmp_path, capsys):
    folder = tmp_path / "reports"
    folder.mkdir()
    assert main(["eval", "--videos", str(tmp_path), "--generated", str(tmp_path), "-o", str(folder), "-q"]) == 2
    assert capsys.readouterr().err == (f"vidmusician eval: error: --output {folder}: is a folder; give a file name "
                                       "such as report.json\n")


def _one_clip(tmp_path, generated_name="clip.wav", generated_bytes=None):
    """A videos folder with clip.mp4 and a generated folder with one file; returns the argv."""
    (tmp_path / "v").mkdir()
    (tmp_path / "g").mkdir()
    flash_video(tmp_path / "v" / "clip.mp4", [0.5], 1.0)
    if generated_bytes is None:
        sf.write(tmp_path / "g" / generated_name, np.zeros(SR, np.float32), SR)
    else:
        (tmp_path / "g" / generated_name).write_bytes(generated_bytes)
    return ["--videos", str(tmp_path / "v"), "--generated", str(tmp_path / "g")]


def test_no_matching_files(tmp_path, capsys):
    _bad(_one_clip(tmp_path, "other.wav"), tmp_path, capsys, "clip.mp4 -> clip.wav")


def test_unreadable_generated_audio(tmp_path, capsys):
    argv = _one_clip(tmp_path, generated_bytes=b"not audio at all" * 100)
    _bad(argv, tmp_path, capsys, str(tmp_path / "g" / "clip.wav"), "cannot decode the audio")


def test_embedder_needs_a_reference_and_must_import(tmp_path, capsys):
    argv = _one_clip(tmp_path)
    _bad(argv + ["--embedder", "test_eval_cli:toy_embedder"], tmp_path, capsys, "--reference")
    argv += ["--reference", str(tmp_path / "v")]
    _bad(argv + ["--embedder", "no_such_module_xyz:f"], tmp_path, capsys, "no_such_module_xyz")
    _bad(argv + ["--embedder", ":f"], tmp_path, capsys, "package.module:name")
    _bad(argv + ["--embedder", "panns"], tmp_path, capsys, "unknown embedder", "clap, vggish")


def test_one_run_scores_d2m_and_loris_each_with_its_own_onsets(tmp_path):
    # A click 0.09 s after another is an onset for LORIS's 3-frame windows but
    # not for D2M-GAN's 1-frame mean (it must rise 0.4 over the frame before),
    # so the generated onsets fill bins {0, 2} for D2M-GAN and {0, 1, 2} for LORIS.
    videos, generated = tmp_path / "v", tmp_path / "g"
    videos.mkdir()
    generated.mkdir()
    reference = click_track(mid_hop([0.5, 1.5, 2.5, 3.5]), 4.0, SR)
    flash_video(videos / "clip.mp4", [0.6, 2.6], 4.0, audio=reference)
    sf.write(generated / "clip.wav", click_track(mid_hop([0.5, 0.97, 1.06, 2.5]), 4.0, SR), SR)
    out = tmp_path / "report.json"
    argv = ["eval", "--videos", str(videos), "--generated", str(generated), "--reference", str(videos),
            "--encoder", "tiny", "--quiet", "--out", str(out), "--ba-sigma", "0.05"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    row = report["files"][0]
    assert row["counts"]["generated_onsets"] == 3 and row["counts"]["generated_onsets_loris"] == 4
    assert (row["bcs"], row["bhs"]) == (2 / 4, 2 / 4)
    assert (row["loris_cover"], row["loris_hit"]) == (3 / 3, 3 / 4)
    assert report["settings"]["ba_sigma"] == 0.05
    # Bailando's beat alignment with the sigma given in seconds (flashes ~70 ms
    # after the clicks: the default 0.12 s forgives that more than 0.05 s does).
    beats = music_rhythm(generated / "clip.wav").beats
    assert row["beat_alignment"] == pytest.approx(metrics.beat_alignment_score(beats, [0.6, 2.6], 0.05), abs=1e-12)
    assert row["beat_alignment"] < metrics.beat_alignment_score(beats, [0.6, 2.6], SIGMA) - 0.1


def test_beat_floor_sets_the_visual_threshold(tmp_path):
    # Flashes change the tiny encoder's signal by ~1.9: a floor of 5 leaves no beat.
    argv = _one_clip(tmp_path)
    out = tmp_path / "r.json"
    assert main(["eval", *argv, "--encoder", "tiny", "--quiet", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["files"][0]["counts"]["visual_beats"] == 1
    assert main(["eval", *argv, "--encoder", "tiny", "--quiet", "--out", str(out), "--beat-floor", "5"]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["visual"]["floor"] == 5.0
    assert report["files"][0]["counts"]["visual_beats"] == 0
    assert main(["eval", *argv, "--encoder", "tiny", "--quiet", "--out", str(out), "--beat-floor", "-1"]) == 2


@pytest.mark.parametrize("value", ["0", "-0.1", "nan"])
def test_ba_sigma_must_be_positive(tmp_path, capsys, value):
    _bad(_one_clip(tmp_path) + ["--ba-sigma", value], tmp_path, capsys, "--ba-sigma", "0.05")


# --------------------------------------------------------------------------- #
# The main output format of `vidmusician generate`: music muxed into the video as AAC


def test_music_in_an_mp4_scores_as_the_same_music_in_a_wav(tmp_path, capsys):
    from vidmusician.muxing import mux_audio

    # 3.5 s: the AAC track ends in a padded frame (20 ms past the music at 32 kHz).
    duration = 3.5
    videos, wav_dir, mp4_dir, both = (tmp_path / n for n in ("v", "wav", "mp4", "both"))
    for d in (videos, wav_dir, mp4_dir, both):
        d.mkdir()
    flash_video(videos / "clip.mp4", train(5), duration)
    t = np.arange(int(duration * SR)) / SR
    # Clicks on the flashes, and a tone that lasts to the very end of the music.
    music = click_track(mid_hop(train(5)), duration, SR) + (0.3 * np.sin(2 * np.pi * 440 * t) * (t > 2.9)).astype(np.float32)
    sf.write(wav_dir / "clip.wav", music, SR)
    sf.write(both / "clip.wav", music, SR)
    for d in (mp4_dir, both):
        mux_audio(videos / "clip.mp4", music[None], SR, d / "clip.mp4")

    # Read as long as it really is: the encoder's padding is not music.
    assert len(load_audio(mp4_dir / "clip.mp4", 22050)) == len(load_audio(wav_dir / "clip.wav", 22050))
    reports = {}
    for d in (wav_dir, mp4_dir):
        out = tmp_path / f"{d.name}.json"
        assert main(["eval", "--videos", str(videos), "--generated", str(d), "--reference", str(wav_dir),
                     "--encoder", "tiny", "--quiet", "--out", str(out)]) == 0
        reports[d.name] = json.loads(out.read_text())["files"][0]
    assert reports["mp4"]["counts"] == reports["wav"]["counts"]
    for key in ("beat_alignment", "bcs", "bhs", "loris_cover", "loris_hit", "loris_f1"):
        assert reports["mp4"][key] == pytest.approx(reports["wav"][key], abs=1e-6), key

    # Both formats of one clip: the report says which one it scored.
    capsys.readouterr()
    assert main(["eval", "--videos", str(videos), "--generated", str(both), "--encoder", "tiny"]) == 0
    assert "note: clip: scoring clip.wav of the generated files (also there: clip.mp4)" in capsys.readouterr().err
