"""Rhythm metrics against values computed by hand, and the Fréchet distance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vidmusician.evaluation import frechet, metrics
from vidmusician.errors import ConfigError

# Reference onsets in 4 distinct 1-second bins (0, 1, 2, 3); off-integer times so
# the bin of each is unambiguous.
REF = [0.5, 1.5, 2.5, 3.5]


# --------------------------------------------------------------------------- #
# D2M-GAN BCS / BHS and the LORIS variant


def test_perfect_alignment():
    assert metrics.beats_scores(REF, REF) == (1.0, 1.0)
    s = metrics.loris_scores(REF, REF)
    assert (s.cover, s.hit, s.f1) == (1.0, 1.0, 1.0)


def test_half_the_beats_hit():
    # Generated onsets in bins 0 and 2 only (two onsets share bin 2).
    gen = [0.4, 2.1, 2.9]
    assert metrics.bin_counts(gen, REF) == metrics.BinCounts(generated=2, reference=4, hits=2)
    assert metrics.beats_scores(gen, REF) == (2 / 4, 2 / 4)
    s = metrics.loris_scores(gen, REF)
    # cover = 2 hits / 2 generated bins, hit = 2 / 4, F1 = 2*1*.5/1.5
    assert (s.cover, s.hit) == (1.0, 0.5)
    assert s.f1 == pytest.approx(2 / 3)


def test_none_hit():
    gen = [4.5, 5.2, 6.7]  # bins 4, 5, 6: disjoint from the reference's
    assert metrics.beats_scores(gen, REF) == (3 / 4, 0.0)
    s = metrics.loris_scores(gen, REF)
    assert (s.cover, s.hit, s.f1) == (0.0, 0.0, 0.0)


def test_more_generated_than_reference_beats():
    # Bins 0..5 generated (6), reference 0..3 (4): all 4 hit, 2 extra.
    gen = [0.1, 1.1, 2.1, 3.1, 4.1, 5.1, 5.9]
    bcs, bhs = metrics.beats_scores(gen, REF)
    assert bcs == 6 / 4  # BCS is not capped at 1, as in D2M-GAN's code
    assert bhs == 1.0
    s = metrics.loris_scores(gen, REF)
    assert (s.cover, s.hit) == (4 / 6, 1.0)
    assert s.f1 == pytest.approx(2 * (4 / 6) / (4 / 6 + 1))


def test_duration_compares_the_common_span():
    gen = [0.5, 1.5, 2.5, 3.5, 4.5]
    assert metrics.beats_scores(gen, REF) == (5 / 4, 1.0)
    assert metrics.beats_scores(gen, REF, duration=4.0) == (1.0, 1.0)
    assert list(metrics.onset_bins([3.99, 4.0, 0.0], duration=4.0)) == [0, 3]


def test_empty_denominators():
    assert all(math.isnan(v) for v in metrics.beats_scores([0.5], []))
    # LORIS's code scores an empty denominator as 0 (silence scores nothing).
    s = metrics.loris_scores([], REF)
    assert (s.cover, s.hit, s.f1) == (0.0, 0.0, 0.0)


def test_bad_event_times_are_refused():
    with pytest.raises(ConfigError, match="negative"):
        metrics.onset_bins([-0.1, 1.0])
    with pytest.raises(ConfigError, match="non-finite"):
        metrics.onset_bins([np.nan])


# --------------------------------------------------------------------------- #
# Bailando beat alignment


def test_beat_alignment_perfect_and_half():
    sigma = metrics.bailando_sigma(25.0)
    assert sigma == pytest.approx(0.12) == metrics.DEFAULT_BA_SIGMA
    assert metrics.bailando_sigma() == pytest.approx(0.05)  # Bailando's own: 3 frames at 60 fps
    music = [0.5, 1.5, 2.5, 3.5]
    assert metrics.beat_alignment_score(music, music, sigma) == 1.0
    # Half the music beats sit on a visual beat; the other half are 10 sigma away
    # from every visual beat (exp(-50) ~ 2e-22).
    visual = [0.5, 1.5]
    far = 10 * sigma
    music = [0.5, 1.5, 1.5 + far, 1.5 + 2 * far]
    assert metrics.beat_alignment_score(music, visual, sigma) == pytest.approx(0.5, abs=1e-12)


def test_beat_alignment_by_hand():
    sigma = metrics.bailando_sigma(25.0)  # 3 frames at 25 fps
    visual = [1.0, 2.0]
    # Music beats 1, 2 and 3 frames away from the nearest visual beat, and 2 s away.
    music = [1.04, 2.08 - 0.16, 2.12, 4.0]
    d = np.array([1, 2, 3, 50]) / 25.0
    expected = np.mean(np.exp(-(d**2) / (2 * 0.12**2)))
    assert metrics.beat_alignment_score(music, visual, sigma) == pytest.approx(expected, rel=1e-12)
    # Same numbers as Bailando's frame-domain code: exp(-d_frames^2 / 2 / 9).
    frames = np.array([1, 2, 3, 50])
    assert expected == pytest.approx(np.mean(np.exp(-(frames**2) / 2 / 9)), rel=1e-12)


def test_beat_alignment_empty_and_bad_sigma():
    assert math.isnan(metrics.beat_alignment_score([], [1.0], 0.1))
    assert metrics.beat_alignment_score([1.0], [], 0.1) == 0.0
    with pytest.raises(ConfigError):
        metrics.beat_alignment_score([1.0], [1.0], 0.0)
    with pytest.raises(ConfigError):
        metrics.bailando_sigma(0)


# --------------------------------------------------------------------------- #
# Fréchet distance


def _with_exact_stats(rng: np.random.Generator, n: int, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Samples whose empirical mean and (unbiased) covariance are exactly mu and cov."""
    z = rng.standard_normal((n, mu.size))
    z -= z.mean(axis=0)
    # Whiten to identity empirical covariance, then color with chol(cov).
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mu


def test_frechet_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((200, 8))
    assert frechet.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    x = _with_exact_stats(rng, 500, mu1, np.diag(v1))
    y = _with_exact_stats(rng, 300, mu2, np.diag(v2))
    # Commuting covariances: d^2 = |dmu|^2 + sum (sqrt(v1) - sqrt(v2))^2 = 5 + (4 + 1 + 0).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert expected == pytest.approx(10.0)
    assert frechet.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_closed_form_for_general_gaussians():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    s1, s2 = a @ a.T + np.eye(4), b @ b.T + np.eye(4)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    # Tr((s1 s2)^{1/2}) through the symmetric form s1^{1/2} s2 s1^{1/2}, computed by
    # eigendecomposition: an independent route from the code's sqrtm(s1 @ s2).
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvalsh(r1 @ s2 @ r1)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet.frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    x, y = _with_exact_stats(rng, 400, mu1, s1), _with_exact_stats(rng, 400, mu2, s2)
    assert frechet.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)


def test_frechet_with_a_pluggable_embedder():
    rng = np.random.default_rng(3)

    def embedder(audio: np.ndarray, sample_rate: int) -> np.ndarray:
        # Frames of 100 samples -> (mean, std) per frame: a stand-in for a real model.
        frames = audio[: len(audio) // 100 * 100].reshape(-1, 100)
        return np.stack([frames.mean(1), frames.std(1)], axis=1)

    quiet = [0.1 * rng.standard_normal(2000) for _ in range(3)]
    loud = [1.0 * rng.standard_normal(2000) for _ in range(3)]
    same = frechet.frechet_audio_distance(quiet, quiet, 16000, embedder)
    other = frechet.frechet_audio_distance(quiet, loud, 16000, embedder)
    assert same == pytest.approx(0.0, abs=1e-9)
    assert other > 0.5  # std 0.1 vs 1.0: the second coordinate's means differ by ~0.9


def test_frechet_refuses_mismatched_sets():
    with pytest.raises(ConfigError, match="same embedder"):
        frechet.frechet_distance(np.zeros((5, 3)) + np.arange(5)[:, None], np.ones((5, 2)) * np.arange(5)[:, None])
    with pytest.raises(ConfigError, match="N >= 2"):
        frechet.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))


# --------------------------------------------------------------------------- #
# Aggregation


def test_mean_scores_skip_undefined_and_take_loris_f1_of_means():
    rows = [
        {"bcs": 1.0, "loris_cover": 1.0, "loris_hit": 0.0, "loris_f1": 0.0},
        {"bcs": math.nan, "loris_cover": 0.0, "loris_hit": 1.0, "loris_f1": 0.0},
        {"bcs": 0.5, "loris_cover": 0.5, "loris_hit": 0.5, "loris_f1": 0.5},
    ]
    means = metrics.mean_scores(rows, ["bcs", "loris_cover", "loris_hit", "loris_f1"])
    assert means["bcs"] == 0.75
    assert means["loris_cover"] == means["loris_hit"] == 0.5
    assert means["loris_f1"] == 0.5  # F1 of the means, not the mean F1 (1/6)


# --------------------------------------------------------------------------- #
# Events from files: music onsets and beats, visual beats

HOP = 512 / 22050  # D2M-GAN's onset envelope hop


def _mid_hop(times):
    # Clicks half a hop after an envelope frame center: see test_eval_cli.mid_hop.
    return [(round(t / HOP) + 0.5) * HOP for t in times]


def test_music_onsets_and_beats_of_a_click_track(tmp_path):
    import soundfile as sf
    from media import click_track, flash_video

    from vidmusician.evaluation.beats import music_rhythm

    clicks = _mid_hop([0.52 + 0.6 * k for k in range(9)])
    audio = click_track(clicks, 6.0)
    sf.write(tmp_path / "clicks.flac", audio, 32000)
    flash_video(tmp_path / "clip.mp4", [1.0], 6.0, audio=audio)
    for path in (tmp_path / "clicks.flac", tmp_path / "clip.mp4"):  # FLAC, and AAC in an mp4
        r = music_rhythm(path)
        # Each click shows in the envelope frame after its own (half a hop late).
        expected = [t + HOP / 2 for t in clicks]
        np.testing.assert_allclose(r.onsets, expected, atol=1e-6, err_msg=str(path))
        np.testing.assert_allclose(r.beats, expected, atol=1e-6, err_msg=str(path))
        assert r.duration == pytest.approx(6.0, abs=0.05)
        assert r.envelope.max() == 1.0 and len(r.envelope) == pytest.approx(6.0 / HOP, abs=2)


def _music_from_the_first_sample(sr: int) -> np.ndarray:
    """A tone with noise, loud from sample 0 (a clip cut from a song), and clicks."""
    t = np.arange(3 * sr) / sr
    y = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    click = 0.9 * np.sin(2 * np.pi * 1000 * t[:200]) * np.exp(-t[:200] / 0.002)
    for at in (0.5, 0.95, 1.04, 2.1):
        y[int(at * sr) : int(at * sr) + 200] += click
    return y.astype(np.float32)


def test_onsets_are_the_reference_implementations_own():
    import librosa

    from vidmusician.evaluation.beats import ONSET_PRESETS, music_rhythm

    sr = 22050
    y = _music_from_the_first_sample(sr)
    r = music_rhythm(y, ONSET_PRESETS["d2m"], {"loris": ONSET_PRESETS["loris"]})

    # The reference calls (beat_detect of D2M-GAN's and LORIS's beats_scores.py),
    # with the STFT padding of the librosa they ran (0.8: reflect).
    def reference(pad_mode=None, **peaks):
        env = librosa.onset.onset_strength(y=y, sr=sr, **({"pad_mode": pad_mode} if pad_mode else {}))
        return librosa.onset.onset_detect(onset_envelope=env, sr=sr, wait=1, delta=0.2, units="time", **peaks)

    d2m = dict(pre_avg=1, post_avg=1, post_max=1)  # pre_max left at librosa's default, as D2M-GAN does
    loris = dict(pre_avg=3, post_avg=3, pre_max=3, post_max=3)
    np.testing.assert_array_equal(r.onsets, reference("reflect", **d2m))
    np.testing.assert_array_equal(r.other_onsets["loris"], reference("reflect", **loris))
    assert r.onsets.min() > 0.4
    # Today's librosa pads with zeros: the music then rises out of silence, an
    # onset in its first 0.1 s (bin 0) that the references never saw.
    for peaks in (d2m, loris):
        today = reference(**peaks)
        assert today.min() < 0.1 and len(today) == len(reference("reflect", **peaks)) + 1


def test_other_onset_settings_must_share_the_envelope():
    from vidmusician.evaluation.beats import OnsetConfig, music_rhythm

    with pytest.raises(ConfigError, match="another envelope"):
        music_rhythm(np.zeros(22050, np.float32), OnsetConfig(), {"zeros": OnsetConfig(pad_mode="constant")})


def test_silence_has_no_onsets_or_beats():
    from vidmusician.evaluation.beats import music_rhythm

    r = music_rhythm(np.zeros(22050 * 2, np.float32))
    assert r.onsets.size == 0 and r.beats.size == 0


def test_load_audio_errors_name_the_file(tmp_path):
    from media import flash_video

    from vidmusician.errors import AudioError
    from vidmusician.evaluation.beats import load_audio

    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav", 22050)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(AudioError, match=f"{junk}: cannot decode the audio"):
        load_audio(junk, 22050)
    silent_video = flash_video(tmp_path / "silent.mp4", [0.5], 1.0)
    with pytest.raises(AudioError, match="has no audio stream"):
        load_audio(silent_video, 22050)


def test_change_signal_is_the_patch_mean_without_the_first_frame():
    from vidmusician.evaluation.beats import change_signal

    feats = np.array([[1.0, 1.0], [0.1, 0.3], [0.0, 0.0], [0.5, 0.9]], np.float32)
    np.testing.assert_allclose(change_signal(feats), [0.0, 0.2, 0.0, 0.7], rtol=1e-6)
    with pytest.raises(ConfigError):
        change_signal(np.zeros(5))


def test_pick_visual_beats_takes_the_first_frame_of_each_change():
    from vidmusician.evaluation.beats import pick_visual_beats

    x = np.full(100, 0.01)
    x[[20, 21]] = 1.0  # a one-frame flash: changes when it appears and when it goes
    x[[50, 51]] = [0.6, 0.8]  # a change that peaks one frame after it starts
    x[80] = 0.5
    np.testing.assert_allclose(pick_visual_beats(x, 25.0), [20 / 25, 50 / 25, 80 / 25])
    assert pick_visual_beats(np.zeros(10), 25.0).size == 0


def test_visual_beats_of_a_flash_video_are_the_flash_frames(tmp_path):
    from media import flash_video

    from vidmusician.evaluation.beats import visual_rhythm

    flashes = [0.52, 1.2, 2.0, 3.48]
    r = visual_rhythm(flash_video(tmp_path / "f.mp4", flashes, 4.0), encoder="tiny")
    np.testing.assert_allclose(r.beats, flashes, atol=1e-9)
    assert r.fps == 25.0 and len(r.signal) == 100 and r.duration == pytest.approx(4.0)


def test_visual_beats_from_optical_flow(tmp_path):
    from media import write_video

    from vidmusician.evaluation.beats import visual_rhythm

    # A textured block that stands still except for a 3-pixel jump at each beat.
    jumps = [0.6, 1.48, 2.4]
    frames = np.full((100, 64, 64, 3), 30, np.uint8)
    x = 8
    for i in range(100):
        x += 3 * (i in {round(t * 25) for t in jumps})
        frames[i, 20:44, x : x + 16] = 200
        frames[i, 20:44:4, x : x + 16] = 90  # stripes, so the block has texture
    r = visual_rhythm(write_video(tmp_path / "jump.mp4", frames, 25), source="flow")
    np.testing.assert_allclose(r.beats, jumps, atol=1e-9)
    assert r.source == "flow"
    with pytest.raises(ConfigError, match="unknown visual beat source"):
        visual_rhythm(tmp_path / "jump.mp4", source="sift")


def test_plot_rhythm_writes_a_png(tmp_path):
    from vidmusician.evaluation.plots import plot_rhythm
    from vidmusician.evaluation.beats import MusicRhythm, VisualRhythm

    t = np.arange(100) / 25
    visual = VisualRhythm(4.0, (np.sin(t * 5) ** 2).astype(np.float32), 25.0, np.array([0.5, 1.5]), "change")
    music = MusicRhythm(4.0, np.linspace(0, 1, 172, dtype=np.float32), 43.07, np.array([0.51, 2.0]), np.array([0.5]))
    out = plot_rhythm(tmp_path / "sub" / "p.png", visual, music, music, title="clip")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert [p.name for p in out.parent.iterdir()] == ["p.png"]
