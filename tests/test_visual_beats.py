"""Visual beats mean events: none on clips without one, one per cut or flash on clips with them.

The clips are camera-like: smooth random textures (scenery) panning at their own
speed and direction, a bright object crossing the frame, and sensor noise on
every frame, so the change signal is never flat. Some clips have hard cuts
between such scenes (what an edited video has), others none (a static shot, a
slow pan, a steadily moving object).
"""

from __future__ import annotations

import numpy as np
import pytest
from media import flash_video, write_video
from scipy import ndimage

from vidmusician.errors import ConfigError
from vidmusician.evaluation.beats import VISUAL_BEAT_PRESETS, VisualBeatConfig, beat_threshold, pick_visual_beats, visual_rhythm

FPS = 25
SIZE = 64
DURATION = 6.0
N = int(DURATION * FPS)


def _texture(rng: np.random.Generator, width: int) -> np.ndarray:
    """Smooth random RGB scenery ``[SIZE, width, 3]`` float in [0, 255], its own blur and palette."""
    blur = rng.uniform(1.5, 4.0)
    tex = ndimage.gaussian_filter(rng.standard_normal((SIZE, width, 3)), (blur, blur, 0))
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return 255 * (rng.uniform(0.1, 0.4, 3) + tex * rng.uniform(0.4, 0.6, 3))


def _scene(rng: np.random.Generator, n: int, pan: float) -> np.ndarray:
    """``n`` frames of a scenery panning ``pan`` px/frame (either way), an object crossing it, and noise."""
    tex = _texture(rng, SIZE + int(abs(pan) * n) + 2)
    start = 0 if pan >= 0 else tex.shape[1] - SIZE - 1
    frames = np.empty((n, SIZE, SIZE, 3))
    # Slow enough to stay in the frame: an object jumping back would be an event.
    y, speed = rng.integers(8, SIZE - 16), rng.uniform(0.2, (SIZE - 8) / N)
    cols = np.arange(SIZE)
    for i in range(n):
        # Sub-pixel steps (linear interpolation), as a camera pans: no judder.
        x0 = start + pan * i
        left, frac = int(np.floor(x0)), x0 - np.floor(x0)
        frames[i] = (1 - frac) * tex[:, left + cols] + frac * tex[:, left + cols + 1]
        ox = int(speed * i)
        frames[i, y : y + 8, ox : ox + 8] = 235
    frames += rng.normal(0, 3.0, frames.shape)  # sensor noise
    return np.clip(frames, 0, 255).astype(np.uint8)


def _clip(path, cuts, seed, pans=(0.4, -0.8, 0.0, 1.2, -0.3)):
    """A clip with hard cuts at ``cuts`` (seconds) between scenes of their own texture and pan."""
    rng = np.random.default_rng(seed)
    starts = [0] + [round(t * FPS) for t in cuts] + [N]
    scenes = [_scene(rng, b - a, pans[k % len(pans)]) for k, (a, b) in enumerate(zip(starts, starts[1:]))]
    return write_video(path, np.concatenate(scenes), FPS)


CUTS = [0.8, 1.6, 2.96, 4.4, 5.2]  # on the 25 fps grid


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        "cuts": _clip(root / "cuts.mp4", CUTS, seed=0),
        "static": _clip(root / "static.mp4", [], seed=1, pans=(0.0,)),
        "slow_pan": _clip(root / "slow_pan.mp4", [], seed=2, pans=(0.5,)),
        "fast_pan": _clip(root / "fast_pan.mp4", [], seed=3, pans=(-2.0,)),
        # A small square drifting in integer-pixel steps over a dark frame: the
        # old relative-to-the-maximum threshold found ~5 beats/s in it.
        "drifting_square": flash_video(root / "square.mp4", [], DURATION),
    }


@pytest.mark.parametrize("source", ["change", "flow"])
def test_a_cut_clip_has_one_beat_per_cut(clips, source):
    r = visual_rhythm(clips["cuts"], encoder="tiny", source=source)
    np.testing.assert_allclose(r.beats, CUTS, atol=1e-9)
    assert r.threshold >= VISUAL_BEAT_PRESETS[source].floor


@pytest.mark.parametrize("source", ["change", "flow"])
@pytest.mark.parametrize("name", ["static", "slow_pan", "fast_pan", "drifting_square"])
def test_a_clip_without_events_has_no_beats(clips, name, source):
    r = visual_rhythm(clips[name], encoder="tiny", source=source)
    assert r.beats.size == 0, (name, source, r.beats)
    assert r.signal.max() > 0  # noise and motion: the signal is not flat, yet nothing stands out


def test_threshold_follows_the_clip_own_fluctuations():
    rng = np.random.default_rng(0)
    noise = 1.0 + 0.1 * rng.standard_normal(500)  # sigma 0.1 around a steady level
    baseline, threshold = beat_threshold(noise, 25.0, VisualBeatConfig(floor=0.0))
    assert np.allclose(baseline, 1.0, atol=0.1)
    assert threshold == pytest.approx(5 * 0.1, rel=0.15)  # 5 robust sigmas
    assert pick_visual_beats(noise, 25.0, VisualBeatConfig(floor=0.0)).size == 0
    # An event 10 sigma above the noise is a beat; one of 3 sigma is not, at any scale.
    for scale in (1e-4, 1.0, 1e3):
        x = noise.copy()
        x[100] += 1.0
        x[300] += 0.3
        beats = pick_visual_beats(x * scale, 25.0, VisualBeatConfig(floor=0.0))
        np.testing.assert_allclose(beats, [100 / 25])


def test_floor_is_in_the_signal_units():
    x = np.zeros(200)
    x[[50, 120]] = [0.01, 0.05]  # on a static clip sigma is 0: only the floor decides
    np.testing.assert_allclose(pick_visual_beats(x, 25.0, VisualBeatConfig(floor=0.02)), [120 / 25])
    np.testing.assert_allclose(pick_visual_beats(x, 25.0, VisualBeatConfig(floor=0.005)), [50 / 25, 120 / 25])
    assert pick_visual_beats(x, 25.0, VisualBeatConfig(floor=0.1)).size == 0
    # A steady level (a constant pan) is baseline, not an event.
    assert pick_visual_beats(np.full(200, 3.0), 25.0).size == 0


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="spread"):
        VisualBeatConfig(spread=-1.0)
    with pytest.raises(ConfigError, match="floor"):
        VisualBeatConfig(floor=float("nan"))


def test_beat_alignment_of_a_clip_without_events_is_zero_whatever_the_music(clips, tmp_path):
    import soundfile as sf
    from media import click_track

    from vidmusician.evaluation.evaluate import evaluate

    (tmp_path / "v").mkdir()
    (tmp_path / "g").mkdir()
    (tmp_path / "v" / "square.mp4").write_bytes(clips["drifting_square"].read_bytes())
    sf.write(tmp_path / "g" / "square.wav", click_track([0.5 + 0.5 * k for k in range(10)], DURATION), 32000)
    clip = evaluate(tmp_path / "v", tmp_path / "g", encoder="tiny").clips[0]
    assert clip.visual.beats.size == 0 and clip.music.beats.size >= 8
    assert clip.scores["beat_alignment"] == 0.0
