"""A video's own soundtrack: replaced by the music (and said so), or kept as a second audio stream; music
longer than the video cut at its end (and only that much generated)."""

from __future__ import annotations

import os
import sys

import av
import numpy as np
import pytest
import torch

from media import flash_video
from vidmusician import cli
from vidmusician.errors import ConfigError

NOTICE = "own soundtrack is replaced"
NOTHING_TO_KEEP = "no soundtrack of its own to keep"  # and "of their own", for many videos


@pytest.fixture(scope="module")
def with_audio(tmp_path_factory):
    """A 1.6 s video with a stereo AAC soundtrack of its own (a real video has one)."""
    t = np.arange(round(1.6 * 44100)) / 44100
    audio = 0.3 * np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)])
    return flash_video(tmp_path_factory.mktemp("media") / "clip.mp4", [0.4, 1.0], duration=1.6, audio=audio,
                       sample_rate=44100)


def audio_streams(path):
    """(codec, sample rate, channels, seconds, default?, packet bytes) of each audio stream."""
    with av.open(str(path)) as c:
        streams = list(c.streams.audio)
        packets = {s.index: [] for s in streams}
        for packet in c.demux(*streams):
            if packet.size:
                packets[packet.stream.index].append(bytes(packet))
        return [(s.codec_context.name, s.sample_rate, s.codec_context.channels, float(s.duration * s.time_base),
                 bool(s.disposition & av.stream.Disposition.default), packets[s.index]) for s in streams]


def generate(video, out, *extra):
    return cli.main(["generate", str(video), "--backbone", "tiny", "--encoder", "tiny", "-o", str(out),
                     "--seed", "1", "-q", *extra])


def test_the_soundtrack_is_replaced_with_a_notice(with_audio, tmp_path, capsys):
    assert generate(with_audio, tmp_path / "scored.mp4") == 0
    err = capsys.readouterr().err
    assert sum(NOTICE in line and "--keep-soundtrack" in line for line in err.splitlines()) == 1
    (music,) = audio_streams(tmp_path / "scored.mp4")
    assert music[:3] == ("aac", 32000, 1) and music[4]


def test_keep_soundtrack_keeps_it_as_the_second_stream(with_audio, tmp_path, capsys):
    assert generate(with_audio, tmp_path / "scored.mp4", "--keep-soundtrack") == 0
    err = capsys.readouterr().err
    assert NOTICE not in err and "soundtrack of" not in err
    (original,) = audio_streams(with_audio)
    music, kept = audio_streams(tmp_path / "scored.mp4")
    assert music[:3] == ("aac", 32000, 1) and music[4]  # the music first, played by default
    assert kept[:3] == ("aac", 44100, 2) and not kept[4]
    assert kept[3] == pytest.approx(original[3], abs=1e-3) and kept[5] == original[5]  # copied whole, bit for bit


def test_keep_soundtrack_without_one_or_into_an_audio_file(tmp_path, capsys):
    from vidmusician.muxing import write_output

    silent = flash_video(tmp_path / "silent.mp4", [0.2], duration=0.6)
    assert generate(silent, tmp_path / "scored.mp4") == 0
    assert NOTICE not in capsys.readouterr().err  # nothing was replaced
    music = 0.1 * torch.randn(1, 32000)
    write_output(tmp_path / "out.mp4", music, 32000, video=silent, keep_soundtrack=True)
    assert len(audio_streams(tmp_path / "out.mp4")) == 1  # nothing of its own to keep
    # The command says there was none, and writes the output all the same.
    assert generate(silent, tmp_path / "kept.mp4", "--keep-soundtrack") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if NOTHING_TO_KEEP in line]
    assert len(notes) == 1 and notes[0].startswith("vidmusician generate: note: ") and "--keep-soundtrack" in notes[0]
    assert len(audio_streams(tmp_path / "kept.mp4")) == 1
    with pytest.raises(ConfigError, match="video output"):
        write_output(tmp_path / "out.wav", music, 32000, video=silent, keep_soundtrack=True)
    # From the command line the same is refused before any model loads, and nothing is written.
    assert cli.main(["generate", str(silent), "-o", str(tmp_path / "x.wav"), "--keep-soundtrack"]) == 2
    assert "video output" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["kept.mp4", "out.mp4", "scored.mp4", "silent.mp4"]


def test_many_videos_into_mp4_count_the_replaced_soundtracks(with_audio, tmp_path, capsys):
    silent = flash_video(tmp_path / "silent.mp4", [0.2], duration=0.6)
    out = tmp_path / "out"
    assert cli.main(["generate", str(with_audio), str(silent), "-o", str(out), "--format", "mp4", "--backbone",
                     "tiny", "--encoder", "tiny", "-q"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if NOTICE in line]
    assert len(notes) == 1 and "in 1 of 2 outputs" in notes[0]  # the silent video had none to replace
    assert sorted(os.listdir(out)) == ["clip_music.mp4", "silent_music.mp4"]
    assert all(len(audio_streams(out / name)) == 1 for name in os.listdir(out))


def test_many_videos_keeping_their_soundtracks_count_those_without_one(with_audio, tmp_path, capsys):
    silent = flash_video(tmp_path / "silent.mp4", [0.2], duration=0.6)
    out = tmp_path / "out"
    assert cli.main(["generate", str(with_audio), str(silent), "-o", str(out), "--format", "mp4", "--backbone",
                     "tiny", "--encoder", "tiny", "-q", "--keep-soundtrack"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "soundtrack of their own to keep" in line]
    assert len(notes) == 1 and "1 of 2 videos" in notes[0] and NOTICE not in err, err
    assert [len(audio_streams(out / name)) for name in ("clip_music.mp4", "silent_music.mp4")] == [2, 1]


def test_music_longer_than_the_video_is_cut_and_the_written_length_is_said(with_audio, tmp_path, capsys,
                                                                           monkeypatch):
    """--duration past the video's end: the output holds the video's length of music, and says so
    before sampling, which samples only that length (the rest would be thrown away)."""
    import vidmusician.pipeline

    real, asked = vidmusician.pipeline.generate, []

    def recording(video, **kwargs):
        asked.append(kwargs["duration"])
        print("sampling", file=sys.stderr)
        return real(video, **kwargs)

    monkeypatch.setattr(vidmusician.pipeline, "generate", recording)
    assert generate(with_audio, tmp_path / "scored.mov", "--duration", "2.5", "--keep-soundtrack") == 0
    err = capsys.readouterr().err
    assert asked == [pytest.approx(1.6, abs=0.05)]
    (music, _) = audio_streams(tmp_path / "scored.mov")
    assert music[3] == pytest.approx(1.6, abs=0.05)
    assert "(1.60 s, 32000 Hz)" in err and "2.50 s," not in err, err
    notes = [i for i, line in enumerate(err.splitlines()) if "cut to the video's length" in line]
    assert len(notes) == 1 and notes[0] < err.splitlines().index("sampling"), err
    note = err.splitlines()[notes[0]]
    assert "1.60 s of 2.50 s" in note and "only that is generated" in note and ".wav" in note, err
    assert generate(with_audio, tmp_path / "full.wav", "--duration", "2.5") == 0  # an audio output keeps it all
    err = capsys.readouterr().err
    assert asked[1:] == [2.5] and "(2.50 s, 32000 Hz)" in err and "cut to" not in err, err


def test_many_video_outputs_sample_only_the_videos_length_and_say_so_first(with_audio, tmp_path):
    """generate_many into mp4 with a duration past a video's end: that video's music is sampled to
    its end only (fewer steps than an audio output's), said before sampling, and reported."""
    from vidmusician.batch import generate_many

    silent = flash_video(tmp_path / "silent.mp4", [0.2], duration=0.6)
    runs = {}
    for fmt in ("mp4", "wav"):
        lines, totals = [], []
        report = generate_many([with_audio, silent], tmp_path / fmt, backbone="tiny", encoder="tiny", duration=1.0,
                               seed=1, progress=False, output_format=fmt, batch_size=1,
                               log=lambda line: lines.append(line),
                               on_step=lambda done, total: totals.append((total, len(lines))))
        assert len(report.scored) == 2 and not report.failed
        runs[fmt] = report, lines, totals
    report, lines, totals = runs["mp4"]
    assert report.cut_music == [silent]
    assert lines == ["note: the music is cut to the video's length in 1 of 2 outputs (duration is longer), so only "
                     "that is generated; an audio output (output_format 'wav') keeps all of it"]
    assert totals[0][1] == 1  # said before the first step
    assert totals[0][0] < runs["wav"][2][0][0]  # the silent video's 0.6 s, not 1.0 s, sampled
    assert runs["wav"][0].cut_music == [] and runs["wav"][1] == []


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp4"])
def test_music_without_samples_is_never_written(with_audio, tmp_path, suffix):
    """An empty WAV, or a video whose music is missing, would pass for a finished output."""
    from vidmusician.muxing import write_output
    from vidmusician.errors import AudioError

    out = tmp_path / f"out{suffix}"
    with pytest.raises(AudioError, match="the music has no samples") as err:
        write_output(out, torch.zeros(1, 0), 32000, video=with_audio)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_a_duration_under_one_codec_frame_is_refused(with_audio, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # by the option's own check, before anything loads
        generate(with_audio, tmp_path / "out.wav", "--duration", "0.00001")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == ("vidmusician generate: error: argument --duration: must be in "
                                             "[0.02, 86400], got 0.00001 (see vidmusician generate -h)\n"), err
    assert os.listdir(tmp_path) == []


def test_a_video_shorter_than_the_shortest_music_gets_the_shortest(tmp_path):
    """A video of one frame at 60 fps (17 ms) holds less than generation's shortest music (one codec
    frame): that is generated, and the output cuts it, as before the cap."""
    from vidmusician.generation.windows import MIN_DURATION
    from vidmusician.muxing import muxed_duration

    flash_video(tmp_path / "one.mp4", [], 1 / 60, fps=60)
    assert muxed_duration(tmp_path / "one.mp4", 10.0) == MIN_DURATION
    assert muxed_duration(tmp_path / "one.mp4", 0.01) == 0.01  # (refused later, as any such duration)
