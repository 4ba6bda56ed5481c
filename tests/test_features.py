"""vidmusician.video.features / encoders / `vidmusician features`: the tiny encoder, change signal, cache, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from media import cut_video, flash_video, write_video

import vidmusician.video.features as features_mod
from vidmusician.cli import main
from vidmusician.video.encoders import TINY_CONFIG, TINY_MODEL_NAME
from vidmusician.errors import ConfigError, DataError, VideoError
from vidmusician.adapter.context import resample_local
from vidmusician.video.features import VideoFeatures, extract_features, load_encoder
from vidmusician.video.reader import read_frames, sample_times


@pytest.fixture(scope="module")
def tiny_encoder():
    return load_encoder("tiny", device="cpu")


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def flashes(media_dir):
    """Flashes at 1.0 s and 2.52 s of a 4 s, 25 fps video (frames 25 and 63)."""
    return flash_video(media_dir / "flash.mp4", [1.0, 2.52], 4.0, fps=25)


@pytest.fixture(scope="module")
def cuts(media_dir):
    """Hard cuts at 1.3 s and 2.7 s of a 4 s video at 30 fps (not the local rate)."""
    return cut_video(media_dir / "cuts.mp4", [1.3, 2.7], 4.0, fps=30)


# ---- the encoder ---------------------------------------------------------------------------


def test_tiny_encoder_is_deterministic_and_leaves_the_rng_alone(tiny_encoder):
    state = torch.random.get_rng_state()
    again = load_encoder("tiny", device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    dims = (tiny_encoder.global_dim, tiny_encoder.num_patches, tiny_encoder.token_dim, tiny_encoder.image_size)
    assert dims == (32, 16, 64, (32, 32))
    frames = torch.randint(0, 256, (3, 3, 48, 80), dtype=torch.uint8)
    (e1, t1), (e2, t2) = tiny_encoder.encode(frames), again.encode(frames)
    assert e1.shape == (3, 32) and t1.shape == (3, 16, 64)
    assert torch.equal(e1, e2) and torch.equal(t1, t2)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("shape", [(64, 96), (97, 53), (20, 30)])
def test_batched_preprocessing_matches_open_clip_transform(resize_mode, shape):
    from open_clip.transform import image_transform_v2
    from PIL import Image

    encoder = load_encoder("tiny", device="cpu")
    encoder.preprocess_cfg.resize_mode = resize_mode
    reference = image_transform_v2(encoder.preprocess_cfg, is_train=False)
    noise = torch.randint(0, 256, (2, 3, *shape), dtype=torch.float32)
    frames = torch.nn.functional.avg_pool2d(noise, 5, 1, 2).round().to(torch.uint8)  # smooth, like video
    ours = encoder.preprocess(frames)
    for frame, out in zip(frames, ours):
        ref = reference(Image.fromarray(frame.permute(1, 2, 0).numpy()))
        assert out.shape == ref.shape == (3, 32, 32)
        # Same geometry and normalization; the bicubic kernels differ by at most one level of 255.
        assert (out - ref).abs().max() <= 1.01 / 255 / min(encoder.preprocess_cfg.std)


def _tiny_clip_checkpoint(seed: int):
    import open_clip

    load_encoder("tiny")  # registers the architecture
    torch.manual_seed(seed)
    return open_clip.create_model(TINY_MODEL_NAME)


def test_encoder_loads_checkpoint_files_and_open_clip_folders(tmp_path, tiny_encoder):
    from safetensors.torch import save_file

    model = _tiny_clip_checkpoint(seed=5)
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    save_file(model.state_dict(), tmp_path / "clip.safetensors")
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    config = {"model_cfg": TINY_CONFIG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))

    frames = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    model.visual.output_tokens = True
    with torch.inference_mode():
        expected = model.visual(tiny_encoder.preprocess(frames))[0]
    for spec in (f"{TINY_MODEL_NAME}:{tmp_path / 'clip.pt'}", f"{TINY_MODEL_NAME}:{tmp_path / 'clip.safetensors'}"):
        torch.testing.assert_close(load_encoder(spec, device="cpu").encode(frames)[0], expected)
    assert not torch.allclose(tiny_encoder.encode(frames)[0], expected)
    from_folder = load_encoder(str(folder), device="cpu")
    assert tuple(from_folder.preprocess_cfg.mean) == (0.5, 0.5, 0.5)  # preprocessing travels with the weights


@pytest.mark.parametrize(
    "spec, words",
    [
        ("Nope-B-32:openai", "unknown open_clip model"),
        ("ViT-B-32:no-such-tag", "unknown pretrained tag"),
        ("ViT-B-32:/no/such/file.pt", "not found"),
    ],
)
def test_bad_encoder_spec_raises_config_error(spec, words):
    with pytest.raises(ConfigError, match=words):
        load_encoder(spec, device="cpu")


def test_bare_checkpoint_file_asks_for_the_architecture(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="needs its architecture"):
        load_encoder(str(tmp_path / "weights.pt"))


# ---- features --------------------------------------------------------------------------------


def _peaks_at(signal: torch.Tensor, events: list[int], ratio: float = 0.2) -> None:
    """Asserts a peak within one frame of each event, and nothing elsewhere above ratio * the smallest peak."""
    mean = signal.mean(dim=1).numpy()
    peaks = []
    for k in events:
        window = mean[k - 3 : k + 4]
        assert abs(int(np.argmax(window)) - 3) <= 1, (k, window)
        peaks.append(window.max())
    quiet = np.ones_like(mean, dtype=bool)
    quiet[0] = False  # d_0 = 1
    for k in events:
        quiet[max(k - 1, 0) : k + 2] = False
    assert mean[quiet].max() < ratio * min(peaks), (mean[quiet].max(), peaks)


def test_local_signal_peaks_at_flashes_and_nowhere_else(flashes, tiny_encoder):
    feats = extract_features(flashes, tiny_encoder)
    assert feats.local_feats.shape == (100, 16) and feats.global_feats.shape == (4, 32)
    assert torch.equal(feats.local_feats[0], torch.ones(16))
    _peaks_at(feats.local_feats, [25, 63])


def test_local_signal_peaks_at_cuts_of_another_frame_rate(cuts, tiny_encoder):
    feats = extract_features(cuts, tiny_encoder, local_fps=25)
    # Cut at t: the first local sample at or after t shows the new scene.
    _peaks_at(feats.local_feats, [int(np.ceil(1.3 * 25)), int(np.ceil(2.7 * 25))])


def test_global_embeddings_change_across_cuts(cuts, tiny_encoder):
    # Frames at 0, 1, 2, 3 s; scenes [0, 1.3), [1.3, 2.7), [2.7, 4).
    g = extract_features(cuts, tiny_encoder).global_feats
    cos = torch.nn.functional.cosine_similarity(g[1:], g[:-1], dim=1)
    assert cos[0] > 0.99  # 0 s and 1 s: same scene
    assert cos[1] < 0.95 and cos[2] < 0.95  # 1 s -> 2 s and 2 s -> 3 s: across a cut


@pytest.mark.parametrize("global_fps, local_fps, batch_size", [(1.0, 25.0, 7), (3.0, 10.0, 4), (2.0, 0.5, 64)])
def test_chunked_pipeline_equals_direct_computation(flashes, tiny_encoder, global_fps, local_fps, batch_size):
    feats = extract_features(flashes, tiny_encoder, global_fps=global_fps, local_fps=local_fps, batch_size=batch_size)
    size = tiny_encoder.resize_size(64, 64)
    g_emb, _ = tiny_encoder.encode(read_frames(flashes, sample_times(4.0, global_fps), size=size))
    _, tokens = tiny_encoder.encode(read_frames(flashes, sample_times(4.0, local_fps), size=size))
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    change = torch.cat([torch.ones(1, 16), 1 - (unit[1:] * unit[:-1]).sum(-1)])
    torch.testing.assert_close(feats.global_feats, g_emb)
    torch.testing.assert_close(feats.local_feats, change.clamp(0, 2), atol=1e-5, rtol=0)
    assert (feats.global_fps, feats.local_fps, feats.duration, feats.encoder) == (global_fps, local_fps, 4.0, "tiny")


def test_resample_local_interpolates_with_offset_and_zero_past_the_end():
    local = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])  # 3 frames at 25 fps: 0.12 s
    out = resample_local(local, local_fps=25, frame_rate=50, num_frames=8)
    expected_col0 = [1.0, 2.0, 3.0, 4.0, 5.0, 2.5, 0.0, 0.0]  # ramps to 0 over the last local frame
    torch.testing.assert_close(out[:, 0], torch.tensor(expected_col0))
    torch.testing.assert_close(out[:, 1], 2 * out[:, 0])
    shifted = resample_local(local, 25, 50, num_frames=3, offset=0.04)  # starts at local frame 1
    torch.testing.assert_close(shifted[:, 0], torch.tensor([3.0, 4.0, 5.0]))
    before = resample_local(local, 25, 50, num_frames=3, offset=-0.04)
    torch.testing.assert_close(before[:, 0], torch.tensor([0.0, 0.0, 1.0]))
    long = resample_local(torch.rand(90_000, 4), 25, 50, num_frames=10, offset=3599.0)  # hour-long: exact knots
    torch.testing.assert_close(long[::2], resample_local(long[::2], 50 / 2, 25, 5))


# ---- cache, files ------------------------------------------------------------------------------


def test_cache_returns_identical_tensors_without_decoding(flashes, tiny_encoder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = extract_features(flashes, tiny_encoder, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1

    def no_compute(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(features_mod, "_compute", no_compute)
    copy = shutil.copy(flashes, tmp_path / "renamed.mp4")  # same content, other name: a hit
    for video, encoder in ((flashes, tiny_encoder), (copy, "tiny")):
        again = extract_features(video, encoder, cache_dir=cache)
        assert torch.equal(again.global_feats, first.global_feats)
        assert torch.equal(again.local_feats, first.local_feats)
        assert (again.global_fps, again.local_fps, again.duration, again.encoder) == (1.0, 25.0, 4.0, "tiny")
    with pytest.raises(AssertionError, match="recomputed"):  # another rate is another entry
        extract_features(flashes, tiny_encoder, local_fps=10, cache_dir=cache)


def _custom_encoder(seed: int, name: str = "mine", **kwargs):
    """An encoder built in the caller's code (not from a spec): the tiny architecture, seeded weights."""
    import open_clip

    from vidmusician.video.features import VisualEncoder

    load_encoder("tiny", device="cpu")  # registers the tiny architecture with open_clip
    torch.manual_seed(seed)
    return VisualEncoder(open_clip.create_model(TINY_MODEL_NAME).visual, name, **kwargs)


def test_custom_encoders_of_one_name_do_not_share_cached_features(flashes, tmp_path):
    """A custom encoder's cache entry is keyed by its weights (and preprocessing), not its name alone."""
    cache = tmp_path / "cache"
    a, b, a_again = _custom_encoder(1), _custom_encoder(2), _custom_encoder(1)
    first = extract_features(flashes, a, cache_dir=cache)
    second = extract_features(flashes, b, cache_dir=cache)
    assert not torch.equal(first.global_feats, second.global_feats)
    assert torch.equal(second.global_feats, extract_features(flashes, b).global_feats)
    assert len(list(cache.glob("*.safetensors"))) == 2
    # The same weights in another instance hit the first entry; so does the key a caller gives.
    assert a_again.fingerprint == a.fingerprint != b.fingerprint
    assert torch.equal(extract_features(flashes, a_again, cache_dir=cache).global_feats, first.global_feats)
    assert len(list(cache.glob("*.safetensors"))) == 2
    keyed = _custom_encoder(2, fingerprint="my-encoder-v1")
    assert keyed.fingerprint == "my-encoder-v1"
    other_mean = _custom_encoder(1)
    other_mean.preprocess_cfg.mean = (0.0, 0.0, 0.0)  # the same weights, other preprocessing
    assert other_mean.fingerprint != a.fingerprint


def test_cache_recomputes_a_corrupt_entry(flashes, tiny_encoder, tmp_path):
    first = extract_features(flashes, tiny_encoder, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"garbage")
    again = extract_features(flashes, tiny_encoder, cache_dir=tmp_path)
    assert torch.equal(again.local_feats, first.local_feats)
    assert VideoFeatures.load(entry).local_feats.shape == first.local_feats.shape


def test_features_file_round_trip_and_bad_files(tmp_path):
    from safetensors.torch import save_file

    feats = VideoFeatures(torch.randn(3, 8), torch.rand(75, 4), 1.0, 25.0, 3.0, "tiny")
    loaded = VideoFeatures.load(feats.save(tmp_path / "f.safetensors"))
    assert torch.equal(loaded.global_feats, feats.global_feats) and torch.equal(loaded.local_feats, feats.local_feats)
    assert (loaded.global_fps, loaded.local_fps, loaded.duration, loaded.encoder) == (1.0, 25.0, 3.0, "tiny")
    assert [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]  # no temporary left behind
    save_file({"other": torch.zeros(1)}, tmp_path / "other.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    for name, words in (("other", "not a features file"), ("text", "not a readable"), ("missing", "no such")):
        with pytest.raises(DataError, match=words):
            VideoFeatures.load(tmp_path / f"{name}.safetensors")


def test_bad_arguments_and_bad_video_fail_before_loading_an_encoder(tmp_path, tiny_encoder):
    with pytest.raises(ConfigError, match="local_fps"):
        extract_features(tmp_path / "x.mp4", tiny_encoder, local_fps=0)
    (tmp_path / "text.mp4").write_text("not a video")
    # A spec that would download: the video is checked first, so nothing is fetched.
    with pytest.raises(VideoError, match="text.mp4"):
        extract_features(tmp_path / "text.mp4", "ViT-B-32:openai")


def test_decode_errors_reach_the_caller_and_stop_the_decoder_thread(flashes, tiny_encoder, monkeypatch):
    from vidmusician.video.reader import FrameReader

    original = FrameReader.read
    calls = []

    def failing_read(self, indices):
        calls.append(len(indices))
        if len(calls) == 3:
            raise VideoError("flash.mp4: cannot decode frames (test)")
        return original(self, indices)

    monkeypatch.setattr(FrameReader, "read", failing_read)
    with pytest.raises(VideoError, match="test"):
        extract_features(flashes, tiny_encoder, batch_size=8)
    assert not any(t.name == "vidmusician-decode" for t in threading.enumerate())


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_writes_features_file(flashes, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    assert main(["features", str(flashes), "-o", str(out), "--encoder", "tiny", "-q", "--local-fps", "10"]) == 0
    feats = VideoFeatures.load(out)
    assert feats.local_feats.shape == (40, 16) and feats.global_feats.shape == (4, 32)
    assert (feats.local_fps, feats.global_fps, feats.encoder, feats.encoder_activation) == (10.0, 1.0, "tiny", "gelu")
    printed = capsys.readouterr().out
    assert str(out) in printed and printed.rstrip().endswith("encoder tiny (GELU)")


def test_cli_default_output_and_cache_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    video = write_video(tmp_path / "clip.mp4", np.zeros((10, 32, 32, 3), np.uint8), fps=25)
    assert main(["features", "--cache", str(video), "--encoder", "tiny", "-q"]) == 0
    assert (tmp_path / "clip.features.safetensors").is_file()
    assert len(list((tmp_path / "xdg" / "vidmusician" / "features").glob("*.safetensors"))) == 1
    assert main(["features", str(video), "--encoder", "tiny", "-q", "--cache-dir", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 1


def test_cli_bad_input_is_one_line_exit_2_and_no_output(tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("just text")
    out = tmp_path / "out.safetensors"
    assert main(["features", str(bad), "-o", str(out), "--encoder", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]


def test_cli_subprocess_exit_code_and_stderr(tmp_path):
    missing = tmp_path / "missing.mp4"
    out = tmp_path / "out.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "vidmusician", "features", str(missing), "-o", str(out), "--encoder", "tiny"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"vidmusician features: error: {missing}: no such file"]
    assert not out.exists()


def test_features_output_and_cache_folder_are_checked_before_the_work(tmp_path, capsys, monkeypatch):
    video = flash_video(tmp_path / "clip.mp4", [0.3], 1.0, size=32)
    other = tmp_path / "other.mp4"
    shutil.copyfile(video, other)
    assert main(["features", str(video), "--encoder", "tiny", "-q", "-o", str(other)]) == 2  # not a video's name
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "name the output OUT.safetensors" in err
    assert other.read_bytes() == video.read_bytes()
    computed = []
    compute = features_mod._compute
    monkeypatch.setattr(features_mod, "_compute", lambda *a, **k: computed.append(1) or compute(*a, **k))
    out = tmp_path / "f.safetensors"
    assert main(["features", str(video), "--encoder", "tiny", "-q", "-o", str(out),
                 "--cache-dir", str(video / "sub")]) == 2  # a folder under a file
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(video) in err and computed == [] and not out.exists()
    assert "cannot hold the feature cache" in err and "pass a folder" in err, err
    # A cache that cannot be written after the work: the features are still the output, with a warning.
    write, cache = features_mod.atomic_write, tmp_path / "cache"

    def full_cache(path, *args, **kwargs):  # the disk fills under the cache only: save's own error path
        if cache in Path(path).parents:
            raise OSError(28, "No space left on device")
        return write(path, *args, **kwargs)

    monkeypatch.setattr(features_mod, "atomic_write", full_cache)
    assert main(["features", str(video), "--encoder", "tiny", "-q", "-o", str(out),
                 "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    assert out.is_file() and "warning: " in err and "the features were not cached" in err, err
