"""vidmusician.video.reader: probing, frame-accurate sampling (including variable frame rate), bad input."""

from __future__ import annotations

import numpy as np
import torch
import pytest
from media import (
    click_track,
    flash_video,
    indexed_video,
    read_index,
    truncated_copy,
    write_audio,
    write_image,
    write_video,
    zero_frame_video,
)

from vidmusician.errors import VideoError
from vidmusician.video.reader import (FrameReader, frames_covering, iter_frames, probe, read_frames, sample_times,
                                      whole_frames)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """100 frames at 25 fps (4 s), libx264 with B-frames; frame i shows i."""
    return indexed_video(tmp_path_factory.mktemp("video") / "indexed.mp4", 100, fps=25)


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    """60 frames at irregular times (10 to 100 ms apart)."""
    rng = np.random.default_rng(0)
    times = np.concatenate([[0.0], np.cumsum(rng.integers(10, 100, 59) / 1000.0)])
    path = indexed_video(tmp_path_factory.mktemp("vfr") / "vfr.mp4", 60, times=times)
    return path, times


def test_probe_reports_the_video(tmp_path):
    audio = click_track([0.5], 3.0)
    info = probe(flash_video(tmp_path / "a.mp4", [1.0], 3.0, fps=25, size=64, audio=audio))
    assert (info.num_frames, info.fps, info.width, info.height, info.has_audio) == (75, 25.0, 64, 64, True)
    assert info.duration == pytest.approx(3.0, abs=1e-3)
    frames = np.zeros((30, 48, 80, 3), np.uint8)
    info = probe(write_video(tmp_path / "b.mkv", frames, fps=30))
    assert (info.num_frames, info.width, info.height, info.has_audio) == (30, 80, 48, False)
    assert info.fps == pytest.approx(30.0) and info.duration == pytest.approx(1.0, abs=1e-3)


# An AVI made with a 1/1000 time base: its average_rate is the time base's (1000), not 25.
@pytest.mark.parametrize("codec, name", [("libx264", "v.mp4"), ("mpeg4", "v.mp4"), ("mpeg4", "v.avi")])
def test_read_frames_returns_the_frame_shown_at_each_time(tmp_path, codec, name):
    path = indexed_video(tmp_path / name, 100, fps=25, codec=codec)
    info = probe(path)
    assert info.num_frames == 100 and info.duration == pytest.approx(4.0, abs=1e-3)
    rng = np.random.default_rng(1)
    # Any order, repeats, exact frame starts, and times outside the video.
    times = np.concatenate([rng.uniform(0, 4, 40), np.arange(0, 100, 7) / 25, [-1.0, 0.0, 3.999, 4.0, 9.0, 0.04]])
    rng.shuffle(times)
    frames = read_frames(path, times)
    expected = np.clip(np.floor(times * 25 + 1e-6), 0, 99).astype(int)
    assert frames.shape == (len(times), 3, 64, 64) and frames.dtype == torch.uint8
    np.testing.assert_array_equal(read_index(frames), expected)


# 16, 24, 48, 72 px: widths whose padded rows decord misreads when asked for them directly.
@pytest.mark.parametrize("size", [(32, 48), (40, 16), (24, 24), (32, 72), (48, 64)])
def test_read_frames_decodes_at_the_requested_size(indexed, size):
    frames = read_frames(indexed, [0.0, 1.0, 2.0], size=size)
    assert frames.shape == (3, 3, *size)
    np.testing.assert_array_equal(read_index(frames), [0, 25, 50])


def test_variable_frame_rate_samples_by_timestamp(vfr):
    path, times = vfr
    info = probe(path)
    assert info.num_frames == 60
    assert info.duration >= times[-1]
    # Midway between frames and exactly on them: the frame shown is the last one started.
    query = np.concatenate([times, (times[:-1] + times[1:]) / 2])
    expected = np.concatenate([np.arange(60), np.arange(59)])
    np.testing.assert_array_equal(read_index(read_frames(path, query)), expected)
    # The test can fail: assuming a constant rate picks other frames.
    naive = np.minimum(np.floor(query * info.fps), 59).astype(int)
    assert (naive != expected).mean() > 0.5


def test_frame_reader_indices_follow_timestamps(vfr):
    path, times = vfr
    reader = FrameReader(path)
    np.testing.assert_allclose(reader.timestamps, times, atol=1e-3)
    np.testing.assert_array_equal(reader.indices_at([times[10] - 1e-3, times[10], times[10] + 1e-3]), [9, 10, 10])


def test_iter_frames_covers_the_video_in_bounded_chunks(indexed):
    chunks = list(iter_frames(indexed, fps=10, chunk=16, size=(32, 32)))
    times = np.concatenate([t for t, _ in chunks])
    np.testing.assert_allclose(times, np.arange(40) / 10)
    assert all(len(t) == len(f) <= 16 for t, f in chunks)
    assert [len(t) for t, _ in chunks] == [16, 16, 8]
    indices = np.concatenate([read_index(f) for _, f in chunks])
    np.testing.assert_array_equal(indices, np.floor(np.arange(40) * 2.5 + 1e-6).astype(int))


@pytest.mark.parametrize("size", [None, (32, 24)])
def test_rotated_video_is_read_upright(tmp_path, size):
    frames = np.zeros((10, 48, 64, 3), np.uint8)
    frames[:, :8] = 255  # a white band along the top of the stored (landscape) frames
    path = write_video(tmp_path / "phone.mp4", frames, fps=25, rotation=90)
    info = probe(path)
    assert (info.width, info.height) == (48, 64)  # shown portrait
    out = read_frames(path, [0.0, 0.2], size=size).float()
    assert out.shape == (2, 3, *(size or (64, 48)))
    columns, rows = out.mean(dim=(0, 1, 2)), out.mean(dim=(0, 1, 3))
    # Turned a quarter: the band runs along a side edge, full height.
    assert max(columns[0], columns[-1]) > 200 and rows.min() > 20


def test_sample_times():
    np.testing.assert_allclose(sample_times(3.0, 25), np.arange(75) / 25)  # no extra sample from float noise
    assert len(sample_times(3.01, 1)) == 4
    assert len(sample_times(0.01, 1)) == 1
    with pytest.raises(ValueError):
        sample_times(1.0, 0)


def test_frame_counts_ignore_float_noise_and_nothing_more():
    assert 1.1 * 50 > 55 and 0.29 * 100 < 29  # the float noise the tolerance absorbs
    assert frames_covering(1.1, 50) == 55 and len(sample_times(1.1, 50)) == 55
    assert frames_covering(1.1 + 1e-6, 50) == 56  # a real part of a frame more is one frame more
    assert frames_covering(0.0, 25) == 1
    assert whole_frames(0.29, 100) == 29
    assert whole_frames(0.29 - 1e-6, 100) == 28


def _bad_inputs(tmp: object) -> dict:
    """Every kind of bad input, by name: (path, words the error must contain)."""
    from pathlib import Path

    tmp = Path(tmp)
    good = indexed_video(tmp / "good.mp4", 50)
    (tmp / "folder.mp4").mkdir()
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "text.mp4").write_text("not a video\n" * 20)
    faststart = write_video(tmp / "faststart.mp4", np.zeros((50, 64, 64, 3), np.uint8), 25, faststart=True)
    avi = indexed_video(tmp / "good.avi", 50, codec="mpeg4")
    image = np.full((64, 64, 3), 128, np.uint8)
    return {
        "missing": (tmp / "missing.mp4", "no such file"),
        "directory": (tmp / "folder.mp4", "directory"),
        "empty": (tmp / "empty.mp4", "empty"),
        "text": (tmp / "text.mp4", "not a readable video"),
        "truncated": (truncated_copy(good, tmp / "truncated.mp4", 0.5), "truncated"),
        "truncated_faststart": (truncated_copy(faststart, tmp / "cut_download.mp4", 0.6), "truncated"),
        "truncated_avi": (truncated_copy(avi, tmp / "cut.avi", 0.6), "truncated"),  # its index is lost
        "audio_only": (write_audio(tmp / "song.m4a", click_track([0.1], 1.0)), "no video stream"),
        "still_png": (write_image(tmp / "still.png", image), "still image"),
        "still_jpg": (write_image(tmp / "still.jpg", image), "still image"),
        "zero_frames": (zero_frame_video(tmp / "zero.mkv"), "no frames"),
    }


BAD = [
    "missing", "directory", "empty", "text", "truncated", "truncated_faststart", "truncated_avi",
    "audio_only", "still_png", "still_jpg", "zero_frames",
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    return _bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_raises_one_line_video_error(bad_inputs, kind):
    path, words = bad_inputs[kind]
    for call in (lambda: probe(path), lambda: read_frames(path, [0.0]), lambda: next(iter_frames(path, 1.0))):
        with pytest.raises(VideoError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and str(path) in message and words in message, message


@pytest.fixture
def av1_clip(tmp_path):
    """Ten AV1 frames in an .mp4 (what many downloads are)."""
    import av

    try:
        av.codec.Codec("libsvtav1", "w")
    except Exception:  # pragma: no cover - PyAV's wheels carry it
        pytest.skip("no AV1 encoder in this PyAV")
    return write_video(tmp_path / "av1.mp4", np.zeros((10, 64, 64, 3), np.uint8), 25, codec="libsvtav1")


def test_a_codec_the_frame_reader_lacks_says_which_and_how_to_convert(av1_clip, tmp_path):
    """AV1: decord's FFmpeg has no decoder for it, PyAV's names it."""
    path = av1_clip
    with pytest.raises(VideoError) as err:
        probe(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: cannot be decoded (")
    assert message.endswith("its av1 video stream is not one the frame reader decodes: convert it first, "
                            "e.g. ffmpeg -i IN -c:v libx264 -crf 18 OUT.mp4")
    # A file that is not a video gets no such advice.
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(VideoError) as err:
        probe(tmp_path / "text.mp4")
    assert "convert it first" not in str(err.value)


def test_a_stream_copy_needs_no_encoder_of_its_codec(av1_clip, tmp_path):
    """AV1's decoder (libdav1d) has no encoder of its name: copying its packets into an output must not ask for one."""
    import av

    from vidmusician.muxing import check_muxable, write_output

    path = av1_clip
    music = np.zeros((1, 16000), np.float32)
    for suffix in (".mkv", ".mp4"):
        check_muxable(path, tmp_path / f"out{suffix}")
        write_output(tmp_path / f"out{suffix}", music, 32000, video=path)
        with av.open(str(tmp_path / f"out{suffix}")) as out:
            assert [s.type for s in out.streams] == ["video", "audio"]
            assert out.streams.video[0].codec_context.codec.canonical_name == "av1"
    with pytest.raises(VideoError, match=r"a \.mov file cannot hold its .* video stream"):
        check_muxable(path, tmp_path / "out.mov")


def _mjpeg_with_pcm(path):
    """An AVI of MJPEG frames and 48 kHz stereo PCM (what some cameras write): its streams pass an
    .mp4 header, and the PCM packets are refused when muxed."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("mjpeg", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuvj420p"
        audio = out.add_stream("pcm_s16le", rate=48000)
        audio.layout = "stereo"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        for start in range(0, 48000, 1024):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.int16), format="s16", layout="stereo")
            samples.sample_rate, samples.pts = 48000, start
            out.mux(audio.encode(samples))
        out.mux(audio.encode())
    return path


def test_streams_a_container_refuses_at_their_packets_are_refused_before_any_work(tmp_path):
    from vidmusician.muxing import check_muxable, write_output

    path = _mjpeg_with_pcm(tmp_path / "camera.avi")
    out = tmp_path / "out.mp4"
    with pytest.raises(VideoError) as err:
        check_muxable(path, out, keep_soundtrack=True)
    assert str(err.value).startswith(f"{path}: cannot copy its mjpeg video and audio streams into a .mp4 file (")
    assert str(err.value).endswith("try a .mkv output or leave out --keep-soundtrack")
    with pytest.raises(VideoError, match=r"; try --format mkv or leave out --keep-soundtrack$"):
        check_muxable(path, out, keep_soundtrack=True, format_option="--format")  # the fix as the user chose
    check_muxable(path, out)  # the video stream alone goes in
    check_muxable(path, tmp_path / "out.mkv", keep_soundtrack=True)
    write_output(tmp_path / "out.mkv", np.zeros((1, 16000), np.float32), 32000, video=path, keep_soundtrack=True)
