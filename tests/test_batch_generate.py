"""Scoring many videos: batches by length, resumable outputs, bad videos listed, per-video seeds."""

from __future__ import annotations

import os
import shutil
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import save_tiny_adapter
from media import flash_video, moving_square, write_video
from vidmusician import cli, generate_many
from vidmusician.batch import find_videos, group_by_length, video_seed
from vidmusician.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"
LENGTHS = {"a": 1.4, "b": 0.8, "c": 2.0}  # seconds; b is the shortest, padded most beside c


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three videos of different lengths and one file that is not a video."""
    root = tmp_path_factory.mktemp("videos")
    for name, seconds in LENGTHS.items():
        flash_video(root / f"{name}.mp4", [0.3, seconds - 0.4], duration=seconds)
    (root / "broken.mp4").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return save_tiny_adapter(tmp_path_factory.mktemp("adapter") / "tiny-adapter")


def score(adapter_dir, videos, out, **kw):
    kw.setdefault("seed", 3)
    return generate_many(videos, out, adapter=str(adapter_dir), progress=False, **kw)


def read(path):
    data, sr = sf.read(path, dtype="float32")
    return data, sr


# --------------------------------------------------------------------------- #
# Pieces


def test_group_by_length_puts_similar_lengths_together():
    durations = [2.0, 5.0, 1.0, 4.0, 3.0]
    assert group_by_length(durations, 2) == [[1, 3], [4, 0], [2]]
    assert group_by_length(durations, 10) == [[1, 3, 4, 0, 2]]
    assert group_by_length(durations, 1) == [[1], [3], [4], [0], [2]]
    assert group_by_length([1.0, 1.0, 1.0], 2) == [[0, 1], [2]]  # ties keep their order
    assert group_by_length([], 4) == []

    def generated(groups):  # seconds a grouping generates: each batch as long as its longest, per row
        return sum(len(g) * max(durations[i] for i in g) for g in groups)

    in_order = [[0, 1], [2, 3], [4]]
    assert generated(group_by_length(durations, 2)) == 17.0 < generated(in_order) == 21.0


def test_find_videos_skips_outputs_and_hidden_files(tmp_path):
    for name in ("b.mp4", "a.MOV", "a_music.mp4", ".a.mp4.123.part", "notes.txt", "cover.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.mp4").write_bytes(b"")
    # An earlier run into the same folder wrote a_music.mp4: not a video to score.
    assert find_videos(tmp_path, ".mp4") == [tmp_path / "a.MOV", tmp_path / "b.mp4"]
    assert find_videos(tmp_path, ".wav") == [tmp_path / "a.MOV", tmp_path / "a_music.mp4", tmp_path / "b.mp4"]
    # Named explicitly, any file is tried (and fails later if it is no video); each once.
    assert find_videos([tmp_path / "notes.txt", tmp_path / "b.mp4", tmp_path]) == \
        [tmp_path / "notes.txt", tmp_path / "b.mp4", tmp_path / "a.MOV", tmp_path / "a_music.mp4"]
    with pytest.raises(ConfigError, match="no such file"):
        find_videos([tmp_path / "missing.mp4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no video in this folder"):
        find_videos(tmp_path / "empty")


def test_video_seed_depends_on_the_seed_and_the_name_only(tmp_path):
    assert video_seed(3, "a/clip.mp4") == video_seed(3, tmp_path / "clip.mp4")
    seeds = {video_seed(3, "clip.mp4"), video_seed(4, "clip.mp4"), video_seed(3, "clip2.mp4")}
    assert len(seeds) == 3 and all(0 <= s < 2 ** 63 for s in seeds)


@pytest.mark.parametrize("argv, many", [
    (["a.mp4"], False),
    (["a.mp4", "-o", "x.wav"], False),
    (["a.mp4", "-o", "{tmp}/taken.wav"], False),  # a folder named like a file: refused as today
    (["a.mp4", "-o", "{tmp}/scored"], True),  # an existing folder: the output goes in it
    (["a.mp4", "b.mp4", "-o", "new"], True),
    (["a.mp4", "-o", "new/"], True),  # a trailing slash names a folder, made if missing
    (["a.mp4", "-o", "new.d/"], True),
    (["{tmp}"], True),
])
def test_which_command_lines_score_many(argv, many, tmp_path):
    from vidmusician.cli.commands.generate import many_videos

    (tmp_path / "taken.wav").mkdir()
    (tmp_path / "scored").mkdir()
    args = cli.build_parser().parse_args(["generate", *(a.format(tmp=tmp_path) for a in argv)])
    assert many_videos(args) == many


def test_one_video_into_a_new_folder_named_with_a_slash(folder, adapter_dir, tmp_path, capsys):
    """`generate a.mp4 -o scored/`, as the README scores a folder: the folder is made, not read as a file name."""
    out = f"{tmp_path / 'scored.v1'}/"
    assert cli.main(["generate", str(folder / "a.mp4"), "-o", out, "--adapter", str(adapter_dir), "-q"]) == 0
    assert os.listdir(tmp_path / "scored.v1") == ["a_music.wav"] and "error" not in capsys.readouterr().err


def test_format_names_the_outputs_made_for_you(folder, tmp_path, capsys):
    rc = cli.main(["generate", str(folder / "a.mp4"), "-o", str(tmp_path / "x.wav"), "--format", "mp4"])
    assert rc == 2 and "give one or the other" in capsys.readouterr().err
    rc = cli.main(["generate", str(folder), "-o", str(tmp_path / "out"), "--format", "ogg"])
    assert rc == 2 and "unknown output format 'ogg'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_find_videos_takes_a_video_named_twice_once(tmp_path):
    """The same file under the same name writes the same output with the same seed: once. Under another name,
    another output."""
    (tmp_path / "v").mkdir()
    (tmp_path / "links").mkdir()
    video = tmp_path / "v" / "a.mp4"
    video.write_bytes(b"")
    (tmp_path / "links" / "a.mp4").symlink_to(video)
    (tmp_path / "links" / "alias.mp4").symlink_to(video)
    os.link(video, tmp_path / "hard.mp4")
    os.link(video, tmp_path / "a.mp4")
    respelled = tmp_path / "links" / ".." / "v" / "a.mp4"
    assert find_videos([video, respelled, tmp_path / "links", tmp_path / "a.mp4", tmp_path / "hard.mp4",
                        tmp_path / "v"]) == [video, tmp_path / "links" / "alias.mp4", tmp_path / "hard.mp4"]


def test_videos_that_would_share_an_output_fail_and_the_others_are_scored(folder, adapter_dir, tmp_path, capsys):
    """a.mp4 and a.mkv both name a_music.wav: both listed, on every run, whatever exists; b is scored."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    shutil.copy(folder / "a.mp4", videos / "a.mp4")
    flash_video(videos / "a.mkv", [0.2], duration=0.5)
    shutil.copy(folder / "b.mp4", videos / "b.mp4")
    respelled = str(videos / ".." / "videos" / "b.mp4")  # b named twice: scored once
    argv = ["generate", str(videos), respelled, "-o", f"{out}/", "--adapter", str(adapter_dir), "-q"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert os.listdir(out) == ["b_music.wav"] and "scored 1, skipped 0, failed 2" in err, err
    clash = f"{videos / 'a.mkv'} and {videos / 'a.mp4'} would both write {out / 'a_music.wav'}; rename one"
    assert err.count(clash) == 2 and ": error: " not in err  # as it failed, then under the summary

    (out / "a_music.wav").write_bytes(b"an earlier run's")
    report = score(adapter_dir, [videos], out)
    assert report.scored == [] and report.skipped == [out / "b_music.wav"]
    assert [(v.name, "would both write" in why) for v, why in report.failed] == [("a.mkv", True), ("a.mp4", True)]
    assert (out / "a_music.wav").read_bytes() == b"an earlier run's"


def test_keep_soundtrack_with_an_audio_output_is_said_in_python_names(tmp_path):
    with pytest.raises(ConfigError, match=r"^keep_soundtrack needs a video output, not 'flac': "
                                          r"use output_format='mp4', 'mov' or 'mkv'$"):
        generate_many([tmp_path], tmp_path / "out", output_format="flac", keep_soundtrack=True)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- #
# A folder from the command line


def test_a_folder_scores_the_good_videos_lists_the_bad_and_resumes(folder, adapter_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["generate", str(folder), "-o", str(out), "--adapter", str(adapter_dir), "--seed", "3",
            "--batch-size", "2", "-q"]
    assert cli.main(argv) == 1  # a video failed
    err = capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["a_music.wav", "b_music.wav", "c_music.wav"]
    for name, seconds in LENGTHS.items():  # each row's music went to its own video, at its length
        data, sr = read(out / f"{name}_music.wav")
        assert sr == 32000 and len(data) == round(seconds * sr)
    lines = err.strip().splitlines()
    broken = [line for line in lines if "broken.mp4" in line]  # as it failed, then under the summary
    assert len(broken) == 2 and all(line.count("broken.mp4") == 1 and "not a readable video" in line
                                    for line in broken)
    assert "scored 3, skipped 0, failed 1" in err and "Traceback" not in err

    stamps = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "skipped 3 of 4 videos" in err and "scored 0, skipped 3, failed 1" in err
    assert {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)} == stamps  # not rewritten


def test_a_codec_the_format_cannot_hold_fails_that_video_only_before_it_is_scored(folder, adapter_dir, tmp_path,
                                                                                  capsys, monkeypatch):
    """VP8 cannot go into .mp4: that video is listed, the others are scored, and a rerun says the same."""
    import vidmusician.generation.windows as windows

    read_videos = []
    real = windows.features_of
    monkeypatch.setattr(windows, "features_of",
                        lambda vm, video, *a: read_videos.append(video.name) or real(vm, video, *a))
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.webm", moving_square(10), 25, codec="libvpx")
    shutil.copy(folder / "b.mp4", videos / "b.mp4")
    out = tmp_path / "out"
    argv = ["generate", str(videos), "-o", str(out), "--format", "mp4", "--adapter", str(adapter_dir), "-q"]
    for rerun in (False, True):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert os.listdir(out) == ["b_music.mp4"] and "Traceback" not in err
        assert f"scored {0 if rerun else 1}, skipped {1 if rerun else 0}, failed 1" in err
        failed = [line for line in err.splitlines() if "a.webm" in line]
        assert len(failed) == 2 and all("vp8" in line and line.endswith("; use --format mkv") for line in failed), err
    assert read_videos == ["b.mp4"]  # refused before its features were made and its music sampled


def test_an_output_name_too_long_fails_that_video_only_before_it_is_scored(folder, adapter_dir, tmp_path,
                                                                           monkeypatch):
    """The video's name fits the file system, its output's (longer, and written through a temporary name) does not."""
    import vidmusician.generation.windows as windows

    long = tmp_path / f"{'v' * 240}.mp4"
    shutil.copy(folder / "b.mp4", long)
    read_videos = []
    real = windows.features_of
    monkeypatch.setattr(windows, "features_of", lambda vm, video, *a: read_videos.append(video) or real(vm, video, *a))
    report = score(adapter_dir, [folder / "a.mp4", long], tmp_path / "out")
    assert read_videos == [folder / "a.mp4"]  # refused before its features were made and its music sampled
    assert [p.name for p in report.scored] == ["a_music.wav"]
    assert [(v, "too long" in why) for v, why in report.failed] == [(long, True)]


def test_an_interrupted_run_leaves_no_partial_file_and_a_rerun_finishes(folder, adapter_dir, tmp_path, monkeypatch,
                                                                         capsys):
    from vidmusician import audio_io

    real, calls = audio_io.atomic_write, []

    def dies_in_the_second_write(path, write, durable=False):
        calls.append(path)
        if len(calls) == 2:  # half the file written under its temporary name, then Ctrl-C
            def half(tmp):
                write(tmp)
                Path(tmp).write_bytes(Path(tmp).read_bytes()[:100])
                raise KeyboardInterrupt
            return real(path, half, durable)
        return real(path, write, durable)

    monkeypatch.setattr(audio_io, "atomic_write", dies_in_the_second_write)
    videos = [str(folder / f"{name}.mp4") for name in LENGTHS]
    out = tmp_path / "out"
    argv = ["generate", *videos, "-o", str(out), "--adapter", str(adapter_dir), "--batch-size", "3", "-q"]
    assert cli.main(argv) == 130
    assert os.listdir(out) == ["c_music.wav"]  # the longest first; nothing of the second, not even hidden
    monkeypatch.setattr(audio_io, "atomic_write", real)
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "scored 2, skipped 1, failed 0" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["a_music.wav", "b_music.wav", "c_music.wav"]


def test_on_step_counts_the_steps_of_every_batch_and_stops_the_run(folder, adapter_dir, tmp_path, monkeypatch):
    from vidmusician.errors import DataError
    from vidmusician.generation import windows

    videos = [folder / f"{name}.mp4" for name in LENGTHS]
    calls = []
    report = score(adapter_dir, videos, tmp_path / "all", batch_size=2, on_step=lambda *a: calls.append(a))
    total = calls[0][1]
    assert len(report.scored) == 3 and calls == [(n, total) for n in range(1, total + 1)]  # one call per step run

    class Stop(Exception):
        pass

    stopped = tmp_path / "stopped"

    def stop_in_the_second_batch(done, total):
        if os.listdir(stopped):  # the first batch (c and a, the longest) is written
            raise Stop
    with pytest.raises(Stop):
        score(adapter_dir, videos, stopped, batch_size=2, on_step=stop_in_the_second_batch)
    assert sorted(os.listdir(stopped)) == ["a_music.wav", "c_music.wav"]  # what finished stays, nothing else

    # A batch that loses its longest video runs fewer steps, one that loses all none; the run still ends at its total.
    real = windows.features_of

    def c_and_b_fail(vm, video, *a):
        if video.name in ("c.mp4", "b.mp4"):
            raise DataError(f"{video.name}: not a readable video")
        return real(vm, video, *a)
    monkeypatch.setattr(windows, "features_of", c_and_b_fail)
    calls.clear()
    report = score(adapter_dir, videos, tmp_path / "short", batch_size=2, on_step=lambda *a: calls.append(a))
    assert len(report.scored) == 1 and len(report.failed) == 2
    assert calls[-1] == (total, total) and len(calls) < total
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})  # never backwards


# --------------------------------------------------------------------------- #
# A video's music does not depend on its batch


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampled"])
def test_a_video_alone_and_in_a_batch_gets_the_same_tokens(sampling, folder, adapter_dir, tmp_path, monkeypatch):
    from vidmusician.generation import windows

    decoded = []  # the tokens of each video, as generate_many decodes them

    def recording(musicgen, tokens, duration):
        decoded.append(tokens.clone())
        return real(musicgen, tokens, duration)

    real = windows.decode
    monkeypatch.setattr(windows, "decode", recording)
    top_k = 250 if sampling else 1  # top-1 sampling is the argmax
    batch = score(adapter_dir, [folder / f"{name}.mp4" for name in LENGTHS], tmp_path / "batch", batch_size=3,
                  top_k=top_k)
    assert [p.name for p in batch.scored] == ["c_music.wav", "a_music.wav", "b_music.wav"]  # longest first
    c, a, together = decoded
    assert not torch.equal(a[..., :together.shape[-1]], together)  # each video has music of its own
    decoded.clear()
    score(adapter_dir, [folder / "b.mp4"], tmp_path / "alone", top_k=top_k)
    (alone,) = decoded
    # b, the shortest, ran on past its end beside c: its last frames' higher codebooks, sampled
    # beside the frames after them, are where a batch could leave its mark.
    assert together.shape == alone.shape == (1, 4, round(LENGTHS["b"] * 50))
    assert torch.equal(together, alone)
    assert np.array_equal(read(tmp_path / "batch" / "b_music.wav")[0], read(tmp_path / "alone" / "b_music.wav")[0])


def test_a_list_of_seeds_seeds_each_row_as_if_it_were_alone():
    """VidMusician.generate(seed=[...]): row i samples what a batch of it alone samples under seed i."""
    from conftest import perturb_adapters, tiny_config
    from test_generate import ramp_features
    from vidmusician import attach_adapters, tiny_musicgen

    musicgen = tiny_musicgen()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm, scale=0.1)
    first, second = ramp_features(0.6), ramp_features(0.4)
    _, alone = vm.generate([first], seed=5, return_tokens=True)
    _, rows = vm.generate([first, second], seed=[5, 7], return_tokens=True)
    _, listed = vm.generate([first], seed=[5], return_tokens=True)
    assert torch.equal(rows[:1], alone) and torch.equal(listed, alone)
    _, shared = vm.generate([first, second], seed=5, return_tokens=True)
    assert not torch.equal(shared[:1], alone)  # one stream for the batch: the second row's draws come between
    with pytest.raises(ConfigError, match="one seed per sample"):
        vm.generate([first, second], seed=[5])


# --------------------------------------------------------------------------- #
# README


def test_readme_generate_commands_parse():
    """Every `vidmusician generate` command the README shows is one the parser takes."""
    commands = [line.strip() for line in README.read_text().splitlines()
                if line.strip().startswith(".venv/bin/vidmusician generate")]
    assert any("-o" in c and "--batch-size" in c for c in commands)  # the section on many videos
    assert any("--keep-soundtrack" in c for c in commands)
    parser = cli.build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.command == "generate", command


def test_video_outputs_shorter_than_the_duration_say_the_music_was_cut(folder, adapter_dir, tmp_path, capsys):
    videos = tmp_path / "two"
    videos.mkdir()
    for name in ("a", "b"):  # 1.4 s and 0.8 s
        shutil.copyfile(folder / f"{name}.mp4", videos / f"{name}.mp4")
    argv = ["generate", str(videos), "-o", str(tmp_path / "out"), "--adapter", str(adapter_dir), "-q",
            "--duration", "1.0", "--seed", "1"]
    assert cli.main([*argv, "--format", "mp4"]) == 0
    err = capsys.readouterr().err
    assert ("note: the music is cut to the video's length in 1 of 2 outputs (--duration is longer), so only that "
            "is generated; an audio output (--format wav) keeps all of it") in err, err
    assert cli.main([*argv[:3], str(tmp_path / "wav"), *argv[4:]]) == 0  # audio outputs keep it all
    assert "is cut" not in capsys.readouterr().err


def test_a_loaded_encoder_is_taken_with_and_without_an_adapter(folder, adapter_dir, tmp_path):
    """encoder= may be a VisualEncoder already loaded (as generate's check says): it encodes the
    videos, and the outputs record its name for `vidmusician eval`."""
    from vidmusician import generate
    from vidmusician.audio_io import read_tags
    from vidmusician.video.encoders import load_encoder

    encoder = load_encoder("tiny", device="cpu")
    with pytest.warns(UserWarning, match="no adapter"):
        wav, _ = generate(folder / "b.mp4", backbone="tiny", encoder=encoder, duration=0.2, progress=False)
    assert wav.shape[-1] > 0
    report = score(adapter_dir, [folder / "b.mp4"], tmp_path / "out", encoder=encoder, duration=0.2)
    assert len(report.scored) == 1 and not report.failed
    assert read_tags(report.scored[0])["encoder"] == "tiny"
    with pytest.warns(UserWarning, match="no adapter"):
        report = generate_many([folder / "b.mp4"], tmp_path / "plain", backbone="tiny", encoder=encoder,
                               duration=0.2, progress=False)
    assert len(report.scored) == 1 and not report.failed
