"""Generation: audiocraft's window semantics, per-window video, text + video, outputs, CLI.

Everything runs on the tiny backbone (50 Hz codec, as the real one: the 25 fps local
signal is resampled to it) and the tiny visual encoder. Long videos are tested cheaply
by shrinking the backbone's window to 1 s.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import perturb_adapters, tiny_config
from media import flash_video
from test_timing import reference
from vidmusician import cli
from vidmusician.adapter.audiocraft_internals import text_conditions
from vidmusician.random_backbones import tiny_musicgen
from vidmusician.errors import ConfigError, VideoError
from vidmusician.video.features import VideoFeatures
from vidmusician.model import attach_adapters
from vidmusician.generation.windows import GenerationParams, generate_tokens, plan_windows
from vidmusician.pipeline import generate
from vidmusician.video.reader import probe

LOCAL_FPS = 25  # the local change signal's rate (the codec's is read from the model)


@pytest.fixture(scope="module")
def base():
    """One tiny MusicGen built per module; tests take deep copies (building one runs k-means)."""
    return tiny_musicgen()


def fresh(base, max_duration=None):
    musicgen = copy.deepcopy(base)
    if max_duration is not None:
        musicgen.max_duration = max_duration
    return musicgen


def adapted(base, max_duration=None):
    """A tiny VidMusician whose adapters are away from their (identity) initialization."""
    musicgen = fresh(base, max_duration)
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm, scale=0.1)  # strong enough to act, weak enough that text still matters
    return vm


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return {
        "short": flash_video(root / "short.mp4", [0.3, 0.6, 0.9], duration=1.2),
        "long": flash_video(root / "long.mp4", [0.5, 1.2, 2.0], duration=2.3),
    }


@pytest.fixture(scope="module")
def adapter_dir(base, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter") / "tiny-adapter"
    adapted(base).save_pretrained(path)
    return path


def ramp_features(seconds: float, global_dim: int = 32, patches: int = 16) -> VideoFeatures:
    """Features in [0, 1] whose values say when they are: local row t ~ t (at 25 fps), global row k ~ k."""
    frames = round(seconds * LOCAL_FPS)
    t = torch.arange(frames, dtype=torch.float32)[:, None]
    local = (t + torch.arange(patches) / 100.0) / frames
    glob = (torch.arange(math.ceil(seconds), dtype=torch.float32)[:, None] + torch.arange(global_dim) / 1000.0) / seconds
    return VideoFeatures(glob, local, global_fps=1.0, local_fps=float(LOCAL_FPS), duration=float(seconds),
                         encoder="tiny")


def audiocraft_tokens(musicgen, texts, duration, seed, extend_stride=1.0):
    """What audiocraft's own MusicGen.generate samples (the reference semantics)."""
    musicgen.set_generation_params(duration=duration, extend_stride=extend_stride)
    torch.manual_seed(seed)
    return musicgen.generate(texts, return_tokens=True)


# --------------------------------------------------------------------------- #
# Windows: audiocraft's semantics, each window on its own stretch of video


def test_plan_windows_tiles_the_music():
    windows = plan_windows(125, window=50, stride=25)
    assert [(w.frame_offset, w.prompt_frames, w.frames) for w in windows] == \
        [(0, 0, 50), (25, 25, 50), (50, 25, 50), (75, 25, 50)]
    assert sum(w.frames - w.prompt_frames for w in windows) == 125
    assert [(w.frame_offset, w.prompt_frames, w.frames) for w in plan_windows(30, 50, 25)] == [(0, 0, 30)]


@pytest.mark.parametrize("duration", [0.5, 2.0])  # one window; three windows of 1 s
def test_window_loop_samples_exactly_what_audiocraft_samples(base, duration):
    musicgen = fresh(base, max_duration=1)
    _, expected = audiocraft_tokens(musicgen, ["piano"], duration, seed=3, extend_stride=0.5)
    attributes = text_conditions(musicgen, ["piano"])
    torch.manual_seed(3)
    frames = int(duration * musicgen.frame_rate)
    tokens = generate_tokens(musicgen, attributes, frames, GenerationParams(extend_stride=0.5))
    assert tokens.shape == expected.shape == (1, 4, frames)
    assert torch.equal(tokens, expected)


def test_each_window_reads_its_own_stretch_of_video(base):
    vm = adapted(base, max_duration=1)
    vm.set_generation_params(extend_stride=0.4)
    seen_local, seen_global = [], []
    inputs = vm.lm.video_inputs
    inputs.rhythm_in.register_forward_pre_hook(
        lambda m, args: seen_local.append((vm.context.frame_offset, vm.context.position, args[0].clone())))
    inputs.memory.register_forward_pre_hook(
        lambda m, args: seen_global.append((vm.context.frame_offset, args[0].clone())))
    feats = ramp_features(2)
    vm.generate([feats], duration=2.0, seed=0)

    # 2 s in 1 s windows advancing by 0.4 s: windows start at 0, 0.4, 0.8 and 1.2 s.
    fr = vm.musicgen.frame_rate
    starts = [round(k * 0.4 * fr) for k in range(4)]
    assert sorted({offset for offset, _, _ in seen_local}) == starts
    lags = vm.config.rhythm_lags
    assert len(lags) > 1  # the default rhythm input reads earlier frames too: from before the window as well
    for offset, position, local in seen_local:
        # Step s of this forward is codec frame offset + position + s: the video at that frame's time,
        # beside it the video lag frames earlier (from the whole video, not only this window).
        times = (offset + position + np.arange(local.shape[1])) / fr
        # (Before the video: its first frame.)
        expected = np.concatenate([reference(feats.local_feats.double().numpy(), LOCAL_FPS,
                                             np.maximum(times - lag / fr, 0.0)) for lag in lags], axis=1)
        np.testing.assert_allclose(local[0].numpy(), expected, atol=1e-5, err_msg=f"{(offset, position)}")
    for offset, tokens in seen_global:
        # From the global frame nearest the window's start, the frames of its 1 s (not the memory's 30 s).
        second = round(offset / fr)
        assert vm.config.max_global_tokens > 1 and torch.equal(tokens[0], feats.global_feats[second:second + 1])
    assert sorted({offset for offset, _ in seen_global}) == starts


def test_a_memory_shorter_than_the_window_is_said_and_the_rest_is_not_seen(base):
    musicgen = fresh(base, max_duration=2)
    vm = attach_adapters(musicgen, tiny_config(musicgen, max_global_tokens=1))
    perturb_adapters(vm, scale=0.1)
    seen = []
    vm.lm.video_inputs.memory.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    with pytest.warns(UserWarning, match=r"^the adapter's memory holds 1 global frames \(1 s at 1/s\), so the video "
                                         r"past 1 s of each 2 s window is not seen; train adapters on windows as "
                                         r"long as the backbone's$"):
        vm.generate([ramp_features(2)], duration=2.0, seed=0)
    assert set(seen) == {1}
    vm = adapted(base, max_duration=2)  # 30 tokens: a 2 s window fits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vm.generate([ramp_features(2)], duration=2.0, seed=0)


def test_a_window_longer_than_the_training_windows_is_said_once(base):
    vm = adapted(base, max_duration=2)  # 30 tokens: a 2 s window fits the memory
    vm.config = vm.config.replace(trained_window=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vm.generate([ramp_features(3)], duration=3.0, seed=0)  # two 2 s windows, one warning
    assert [str(w.message) for w in caught] == [
        "the adapter was trained on 1 s windows, so its memory's positions past 1 global frames are untrained "
        "and each 2 s window reads them; prepare the data with a longer --window and train again"]
    for trained in (2.0, None):  # windows as long as the training's; not recorded (an older adapter)
        vm.config = vm.config.replace(trained_window=trained)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            vm.generate([ramp_features(2)], duration=2.0, seed=0)


def test_an_adapter_config_written_before_trained_window_loads_with_none():
    from vidmusician.config import AdapterConfig

    # Saved by release 0.1.0, before the field: what its windows were is unknown, not 30 s.
    assert AdapterConfig.load(Path(__file__).parent / "data" / "t5-lora-adapter").trained_window is None


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_generations_from_two_threads_take_turns_and_keep_their_seeds(base, engine):
    """One model (and torch's one random stream) used from two threads at once: each gets its seed's music."""
    import threading

    vm = adapted(base, max_duration=1)
    vm.set_generation_params(engine=engine)
    feats = ramp_features(1)
    alone = {seed: vm.generate([feats], duration=1.0, seed=seed) for seed in (0, 1)}
    first_running, second_started, results, errors = threading.Event(), threading.Event(), {}, []

    def first_waits_for_the_second(done, total):
        if done == 1:  # the second thread's generation would run now, beside this one, were it let
            first_running.set()
            second_started.wait(timeout=1.5)

    def run(seed, on_step):
        try:
            results[seed] = vm.generate([feats], duration=1.0, seed=seed, on_step=on_step)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    first = threading.Thread(target=run, args=(0, first_waits_for_the_second))
    second = threading.Thread(target=run, args=(1, lambda done, total: second_started.set()))
    first.start()
    assert first_running.wait(timeout=60)
    second.start()
    first.join()
    second.join()
    assert not errors and all(torch.equal(results[s], alone[s]) for s in (0, 1))


# --------------------------------------------------------------------------- #
# Base-model equivalence, text + video, seeds


def test_null_video_equals_plain_musicgen_and_a_video_does_not(base):
    vm = adapted(base, max_duration=1)
    vm.set_generation_params(extend_stride=0.5)
    _, expected = audiocraft_tokens(fresh(base, max_duration=1), ["piano"], 1.5, seed=11, extend_stride=0.5)
    _, null = vm.generate([None], texts=["piano"], duration=1.5, seed=11, return_tokens=True)
    assert torch.equal(null, expected)
    _, with_video = vm.generate([ramp_features(1.5)], texts=["piano"], seed=11, return_tokens=True)
    assert not torch.equal(with_video, expected)  # the perturbed adapters do act


def test_text_and_video_both_steer(base):
    vm = adapted(base)
    feats = ramp_features(1)

    def tokens(text, video):
        return vm.generate([video], texts=[text], duration=0.5, seed=5, return_tokens=True)[1]

    piano = tokens("piano", feats)
    assert torch.equal(piano, tokens("piano", feats))  # same seed, same tokens
    assert not torch.equal(piano, tokens("drums", feats))  # the text still steers
    assert not torch.equal(piano, tokens("piano", None))  # and so does the video


def test_batch_of_videos_of_different_lengths(base):
    vm = adapted(base)
    a, b = ramp_features(0.5), ramp_features(1)
    wav = vm.generate([a, b], texts=["piano", None], seed=2)
    assert wav.shape == (2, 1, vm.sample_rate)  # the longest video
    assert wav.dtype == torch.float32 and torch.isfinite(wav).all()


def test_two_step_cfg_and_bad_params_are_refused(base):
    vm = adapted(base, max_duration=2)
    with pytest.raises(ConfigError, match="two_step_cfg"):
        vm.set_generation_params(two_step_cfg=True)
    with pytest.raises(ConfigError, match="temperature"):
        vm.set_generation_params(temperature=0)
    vm.set_generation_params(extend_stride=2.0)
    with pytest.raises(ConfigError, match="extend_stride"):
        vm.generate([None], duration=3.0)
    vm.set_generation_params(top_k=10_000)
    with pytest.raises(ConfigError, match="top_k"):
        vm.generate([None], duration=1.0)
    with pytest.raises(ConfigError, match="duration"):
        vm.generate([None])


# --------------------------------------------------------------------------- #
# generate(): the one-call API


def test_generate_long_video_exact_length_and_seeded(base, media, adapter_dir):
    info = probe(media["long"])  # 2.3 s: four windows of the 1 s backbone
    kwargs = dict(adapter=adapter_dir, seed=4, progress=False, extend_stride=0.5)
    wav, sr = generate(media["long"], backbone=fresh(base, max_duration=1), **kwargs)
    assert sr == 32000
    assert wav.shape == (1, round(info.duration * sr))
    again, _ = generate(media["long"], backbone=fresh(base, max_duration=1), **kwargs)
    assert torch.equal(wav, again)
    other, _ = generate(media["long"], backbone=fresh(base, max_duration=1), **{**kwargs, "seed": 5})
    assert not torch.equal(wav, other)
    short, _ = generate(media["long"], backbone=fresh(base), duration=1.3, **kwargs)
    assert short.shape == (1, round(1.3 * sr))


@pytest.mark.parametrize("encoder", [None, "tiny"])  # video ignored; video through fresh adapters
def test_without_adapter_the_music_is_plain_musicgen(base, media, encoder):
    with pytest.warns(UserWarning, match="no adapter"):
        wav, sr = generate(media["short"], backbone=fresh(base), encoder=encoder, text="piano", duration=1.0,
                           seed=9, progress=False)
    plain = fresh(base)
    plain.set_generation_params(duration=1.0)
    torch.manual_seed(9)
    assert torch.equal(wav, plain.generate(["piano"])[0])


# --------------------------------------------------------------------------- #
# Output files


def test_wav_and_flac(tmp_path):
    from vidmusician.muxing import write_output

    wav = torch.linspace(-0.5, 0.5, 16000)[None]
    for name in ("a.wav", "a.flac"):
        write_output(tmp_path / name, wav, 32000)
        data, sr = sf.read(tmp_path / name, dtype="float32")
        assert sr == 32000 and data.shape == (16000,)
        assert np.allclose(data, wav[0].numpy(), atol=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["a.flac", "a.wav"]  # no temporary files left


def test_mp4_copies_the_video_stream_and_adds_aac(media, tmp_path):
    from vidmusician.muxing import write_output

    src = media["short"]
    duration = probe(src).duration
    music = 0.1 * torch.randn(1, round((duration + 1.0) * 32000))  # longer than the video: cut
    out = write_output(tmp_path / "scored.mp4", music, 32000, video=src)

    def video_packets(path):
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            return stream.codec_context.name, [bytes(p) for p in c.demux(stream) if p.size]

    codec_in, packets_in = video_packets(src)
    codec_out, packets_out = video_packets(out)
    assert codec_out == codec_in and packets_out == packets_in  # copied bit for bit, not re-encoded
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        audio = c.streams.audio[0]
        assert audio.codec_context.name == "aac" and audio.sample_rate == 32000
        frames = sum(1 for _ in c.decode(video=0))
        audio_seconds = float(audio.duration * audio.time_base)
        total = c.duration / 1e6
    assert frames == probe(src).num_frames
    assert abs(audio_seconds - duration) < 0.1 and abs(total - duration) < 0.1


def test_failed_mux_leaves_no_file(tmp_path):
    from vidmusician.muxing import write_output

    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    with pytest.raises(VideoError):
        write_output(tmp_path / "out.mp4", torch.zeros(1, 3200), 32000, video=bogus)
    assert sorted(os.listdir(tmp_path)) == ["notes.mp4"]


# --------------------------------------------------------------------------- #
# CLI


def test_cli_same_seed_same_output(media, adapter_dir, tmp_path, capsys):
    outputs = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for out in outputs:
        assert cli.main(["generate", str(media["short"]), "-o", str(out), "--adapter", str(adapter_dir),
                         "--seed", "6", "--text", "piano", "-q"]) == 0
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    data, sr = sf.read(outputs[0])
    assert sr == 32000 and len(data) == round(probe(media["short"]).duration * sr)


def test_cli_installation_check_writes_an_mp4(media, tmp_path, capsys):
    out = tmp_path / "scored.mp4"
    rc = cli.main(["generate", str(media["short"]), "--backbone", "tiny", "--encoder", "tiny", "-o", str(out),
                   "--seed", "1", "-q"])
    assert rc == 0 and out.is_file()
    err = capsys.readouterr().err
    assert "warning: no adapter" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def wrong_adapter(tmp_path_factory):
    """An adapter made for a 64-wide tiny backbone: does not fit the 32-wide 'tiny'."""
    musicgen = tiny_musicgen(dim=64)
    path = tmp_path_factory.mktemp("wrong") / "adapter"
    attach_adapters(musicgen, tiny_config(musicgen)).save_pretrained(path)
    return path


@pytest.mark.parametrize("case, match", [
    ("missing video", "no such file"),
    ("not a video", "notes.txt"),
    ("missing adapter", "adapter folder not found"),
    ("adapter for another backbone", "does not match"),
    ("zero duration", "argument --duration: must be in [0.02, 86400], got 0"),
    ("negative duration", "argument --duration: must be in [0.02, 86400], got -2"),
    ("missing output folder", "does not exist"),
    ("unknown extension", "unknown output extension"),
])
def test_cli_bad_input(case, match, media, adapter_dir, wrong_adapter, tmp_path, capsys):
    video, out = str(media["short"]), tmp_path / "out.wav"
    extra = []
    if case == "missing video":
        video = str(tmp_path / "nope.mp4")
    elif case == "not a video":
        video = str(tmp_path / "notes.txt")
        (tmp_path / "notes.txt").write_text("hello")
    elif case == "missing adapter":
        extra = ["--adapter", str(tmp_path / "no-adapter")]
    elif case == "adapter for another backbone":
        extra = ["--adapter", str(wrong_adapter)]
    elif case == "zero duration":
        extra = ["--duration", "0"]
    elif case == "negative duration":
        extra = ["--duration", "-2"]
    elif case == "missing output folder":
        out = tmp_path / "missing" / "out.wav"
    elif case == "unknown extension":
        out = tmp_path / "out.ogg"
    before = set(os.listdir(tmp_path))
    try:
        rc = cli.main(["generate", video, "-o", str(out), "--adapter", str(adapter_dir), "-q", *extra]
                      if "adapter" not in case else ["generate", video, "-o", str(out), "-q", *extra])
    except SystemExit as exc:  # argparse's refusal (--duration) exits, as the console script does
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidmusician generate: error:") and match in lines[0]
    assert not out.exists() and set(os.listdir(tmp_path)) == before  # nothing written, not even a temp file


def test_cli_progress_in_a_log_is_each_bar_once(media, adapter_dir, tmp_path, capsys):
    """stderr to a file (capsys is no terminal): each bar's final state as one line, no redraws."""
    out = tmp_path / "logged.wav"
    assert cli.main(["generate", str(media["short"]), "--adapter", str(adapter_dir), "-o", str(out),
                     "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    bars = [line for line in err.splitlines() if line.startswith("generating")]
    assert len(bars) == 1 and "100%" in bars[0], err
