"""The Python API against inputs of the wrong kind: one project error naming the input, before any work.

Video features (made, loaded, batched), ``extract_features`` and ``generate`` arguments,
a half-precision LM on the CPU, and the ``vidmusician.testing`` media helpers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import TINY_GLOBAL_DIM, TINY_LOCAL_DIM, perturb_adapters, tiny_config
from vidmusician.adapter.context import VideoBatch
from vidmusician.errors import ConfigError, DataError
from vidmusician.testing.media import cut_video, flash_video
from vidmusician.video.features import VideoFeatures, extract_features

FRAME_RATE = 50.0  # the tiny codec's


def features(seconds: int = 2, seed: int = 0) -> VideoFeatures:
    g = torch.Generator().manual_seed(seed)
    return VideoFeatures(torch.randn(seconds, TINY_GLOBAL_DIM, generator=g),
                         torch.rand(25 * seconds, TINY_LOCAL_DIM, generator=g), 1.0, 25.0, float(seconds), "tiny")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return flash_video(tmp_path_factory.mktemp("media") / "clip.mp4", [0.5], 1.0, size=32)


# --------------------------------------------------------------------------- #
# VideoFeatures


def with_value(name: str, row: int, column: int, value: float) -> torch.Tensor:
    x = getattr(features(), name).clone()
    x[row, column] = value
    return x


@pytest.mark.parametrize("field, value, words", [
    ("global_feats", lambda: with_value("global_feats", 1, 3, float("nan")), "global_feats holds NaN/inf values (row 1)"),
    ("local_feats", lambda: with_value("local_feats", 7, 0, float("inf")), "local_feats holds NaN/inf values (row 7)"),
    ("global_feats", lambda: features().global_feats[0], "global_feats must be a 2-D float tensor"),
    ("local_feats", lambda: features().local_feats[None], "local_feats must be a 2-D float tensor"),
    ("global_feats", lambda: features().global_feats.long(), "global_feats must be a 2-D float tensor"),
    ("global_feats", lambda: features().global_feats.tolist(), "global_feats must be a tensor or numpy array"),
    ("local_fps", lambda: 0.0, "local_fps must be a rate in (0, 1000], got 0.0"),
    ("global_fps", lambda: float("nan"), "global_fps must be a rate in (0, 1000], got nan"),
    ("global_fps", lambda: 1e6, "global_fps must be a rate in (0, 1000]"),
    ("global_fps", lambda: "1", "global_fps must be a rate in (0, 1000]"),
    ("duration", lambda: 0.0, "duration must be a positive number of seconds"),
    ("duration", lambda: float("inf"), "duration must be a positive number of seconds"),
    ("duration", lambda: True, "duration must be a positive number of seconds"),
    ("encoder", lambda: None, "encoder must be the encoder's spec (a string, e.g. 'ViT-B-32:openai'), got None"),
    ("encoder_activation", lambda: 5, "encoder_activation must be 'quick_gelu', 'gelu' or None, got 5"),
])
def test_video_features_refuse_bad_fields_in_one_line(field, value, words):
    with pytest.raises(DataError) as info:
        dataclasses.replace(features(), **{field: value()})
    message = str(info.value)
    assert message.startswith("video features: ") and words in message and "\n" not in message, message


def test_numpy_features_are_taken_as_tensors_and_batch_as_the_tensors_do():
    f = features()
    from_numpy = dataclasses.replace(f, global_feats=f.global_feats.numpy(), local_feats=f.local_feats.double().numpy())
    assert isinstance(from_numpy.global_feats, torch.Tensor) and torch.equal(from_numpy.global_feats, f.global_feats)
    a, b = (VideoBatch.from_features([x], FRAME_RATE) for x in (f, from_numpy))
    assert torch.equal(a.global_feats, b.global_feats) and torch.equal(a.local, b.local)


def test_a_batch_checks_its_features_again():
    f = features()
    f.global_feats[1, 2] = float("nan")  # made valid, changed in place since
    with pytest.raises(DataError, match=r"^video features: global_feats holds NaN/inf values \(row 1\)"):
        VideoBatch.from_features([None, f], FRAME_RATE)
    narrow = dataclasses.replace(features(), global_feats=features().global_feats[:, :8])
    with pytest.raises(ConfigError, match=r"^video 2 of the batch has features of widths \(8, 16\)"):
        VideoBatch.from_features([features(), None, narrow], FRAME_RATE)
    with pytest.raises(ConfigError, match=r"^video 1 of the batch: expected VideoFeatures or None, got str$"):
        VideoBatch.from_features([features(), "clip.mp4"], FRAME_RATE)


def test_loading_a_file_of_nan_features_names_the_file(tmp_path):
    from safetensors.torch import save_file

    f = features()
    path = tmp_path / "nan.safetensors"
    meta = {"global_fps": "1.0", "local_fps": "25.0", "duration": "2.0", "encoder": "tiny"}
    save_file({"global": with_value("global_feats", 0, 0, float("nan")), "local": f.local_feats}, path, meta)
    with pytest.raises(DataError, match=r"nan\.safetensors: video features: global_feats holds NaN/inf values"):
        VideoFeatures.load(path)
    save_file({"global": f.global_feats, "local": f.local_feats}, path, {**meta, "local_fps": "0.0"})
    with pytest.raises(DataError, match=r"nan\.safetensors: video features: local_fps must be a rate"):
        VideoFeatures.load(path)


def test_saving_into_a_folder_or_a_missing_one_is_one_line(tmp_path):
    for path, words in ((tmp_path, "this is a folder"), (tmp_path / "missing" / "f.safetensors", "no such file")):
        with pytest.raises(DataError, match=f"^video features not saved: .*{words}") as info:
            features().save(path)
        assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- #
# extract_features and generate: arguments checked before any work


@pytest.mark.parametrize("video, kwargs, words", [
    ("missing.mp4", dict(encoder=5), "encoder must be a spec such as 'ViT-B-32:openai' or a loaded VisualEncoder"),
    ("missing.mp4", dict(global_fps="1"), "global_fps must be a number in (0, 1000], got '1'"),
    ("missing.mp4", dict(local_fps=float("inf")), "local_fps must be a number in (0, 1000], got inf"),
    ("missing.mp4", dict(global_fps=1e6), "global_fps must be a number in (0, 1000], got 1000000.0"),
    ("missing.mp4", dict(local_fps=0), "local_fps must be a number in (0, 1000], got 0.0"),
    ("missing.mp4", dict(batch_size=0), "batch_size must be a whole number"),
    ("missing.mp4", dict(batch_size=2.5), "batch_size must be a whole number"),
    (None, {}, "video must be a video file path, got NoneType"),
])
def test_extract_features_refuses_bad_arguments_before_reading_the_video(tmp_path, video, kwargs, words):
    video = tmp_path / video if video else video  # a file that is not there: the arguments are checked first
    with pytest.raises(ConfigError) as info:
        extract_features(video, **{"encoder": "tiny", **kwargs})
    assert words in str(info.value), info.value


def test_extract_features_takes_numpy_rates(clip):
    f = extract_features(clip, "tiny", global_fps=np.float32(2.0), local_fps=np.int64(25), batch_size=np.int64(8),
                         device="cpu")
    assert (f.global_fps, f.local_fps, f.global_feats.shape[0]) == (2.0, 25.0, 2)


@pytest.mark.parametrize("video, kwargs, words", [
    ("clip", dict(text=["lo-fi"]), "text must be a string (or None), got list; for a text per video call "
                                   "VidMusician.generate(videos, texts=[...])"),
    ("clip", dict(text=5), "text must be a string (or None), got int"),
    ("features", {}, "generate() takes a video file path, got VideoFeatures;"),
    ("frames", {}, "generate() takes a video file path, got ndarray;"),
    (None, dict(duration=3), "generate() takes a video file path, got NoneType;"),
    ("clip", dict(on_step=5), "on_step must be a function on_step(done, total) (or None), got int"),
    ("clip", dict(encoder=5), "encoder must be a visual encoder spec"),
    pytest.param("clip", dict(device="mps"), "device 'mps': no Apple GPU (MPS) here; use cpu",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    ("clip", dict(device="xpu"), "device 'xpu': vidmusician runs on cpu, cuda (cuda:N) or mps"),
    ("clip", dict(device="meta"), "device 'meta' holds no weights to generate with; use cpu or cuda"),
])
def test_generate_refuses_bad_arguments_before_any_model_loads(clip, monkeypatch, video, kwargs, words):
    import vidmusician.pipeline as pipeline
    from vidmusician import generate

    loaded = []
    monkeypatch.setattr(pipeline, "load_for_generation", lambda *a, **k: loaded.append(a))
    video = {"clip": clip, "features": features(), "frames": np.zeros((10, 32, 32, 3), np.uint8)}.get(video)
    with pytest.raises(ConfigError) as info:
        generate(video, adapter="unused", progress=False, **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value), info.value
    assert loaded == []


def test_a_loaded_model_given_as_adapter_or_backbone_is_one_line(clip, tmp_path):
    """generate(video, adapter=vm): the model is loaded already; its own generate is the call."""
    from vidmusician import attach_adapters, generate, generate_many
    from vidmusician.random_backbones import tiny_musicgen

    vm = attach_adapters(tiny_musicgen(), tiny_config(tiny_musicgen()))
    loaded = "^a loaded VidMusician is no adapter or backbone to load: call its own vm.generate\\(videos\\)"
    for kwargs in (dict(adapter=vm), dict(backbone=vm), dict(adapter=vm, backbone=vm)):
        with pytest.raises(ConfigError, match=loaded):
            generate(clip, progress=False, **kwargs)
    with pytest.raises(ConfigError, match=loaded):
        generate_many([clip], tmp_path / "out", adapter=vm, progress=False)
    with pytest.raises(ConfigError, match="^adapter must be an adapter folder or a Hub id \\(org/name\\), got int$"):
        generate(clip, adapter=5, progress=False)


# --------------------------------------------------------------------------- #
# A half-precision LM on the CPU (adapters cast with it)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_visual_memory_takes_float32_tokens_in_its_own_dtype(dtype):
    from vidmusician.adapter.layers import VisualMemory

    memory = VisualMemory(TINY_GLOBAL_DIM, 8, 4).to(dtype)
    out = memory(torch.randn(2, 3, TINY_GLOBAL_DIM))
    assert out.dtype == dtype and out.shape == (2, 3, 8)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_an_lm_cast_to_bfloat16_makes_music_on_the_cpu_with_the_video(engine):
    from vidmusician.model import attach_adapters
    from vidmusician.random_backbones import tiny_musicgen

    musicgen = tiny_musicgen()
    vm = attach_adapters(musicgen, tiny_config(musicgen, stage=2))
    perturb_adapters(vm)
    vm.lm.to(torch.bfloat16)  # adapters included, as a user saving memory does
    vm.set_generation_params(engine=engine)
    video = features(seconds=1)
    wav, tokens = vm.generate([video], duration=0.5, seed=0, return_tokens=True)
    assert wav.shape[-1] == round(0.5 * musicgen.sample_rate) and bool(torch.isfinite(wav).all())
    # The video conditions the music: the null video samples other tokens under the same seed.
    _, null_tokens = vm.generate([None], duration=0.5, seed=0, return_tokens=True)
    assert not torch.equal(tokens, null_tokens)


# --------------------------------------------------------------------------- #
# vidmusician.testing media helpers


@pytest.mark.parametrize("kwargs, words", [
    (dict(flash_times=[0.5], duration=1.0, size=33), "frame size 33x33 px: width and height must be even"),
    (dict(flash_times=[5.0], duration=1.0), "flash at 5.0 s is outside the 1.0 s video (frames 0 to 24 at 25 fps)"),
    (dict(flash_times=[-0.5], duration=1.0), "flash at -0.5 s is outside the 1.0 s video"),
    (dict(flash_times=[], duration=0.0), "duration 0.0 s holds no frame at 25 fps; give at least 0.04 s"),
])
def test_flash_video_refuses_what_it_cannot_write(tmp_path, kwargs, words):
    with pytest.raises(ValueError) as info:
        flash_video(tmp_path / "f.mp4", **kwargs)
    assert words in str(info.value), info.value
    assert list(tmp_path.iterdir()) == []


def test_cut_video_refuses_cuts_outside_the_video(tmp_path):
    with pytest.raises(ValueError, match=r"cut times \[1.5\] must fall inside the 1.0 s video"):
        cut_video(tmp_path / "c.mp4", [1.5], 1.0)
    with pytest.raises(ValueError, match="frame size 31x31"):
        cut_video(tmp_path / "c.mp4", [0.5], 1.0, size=31)


def test_a_loaded_model_refuses_bad_arguments_in_one_line(tmp_path):
    """VidMusician.generate and save_pretrained: the wrong kind of argument is one line, before any video is read."""
    from conftest import tiny_config
    from vidmusician import attach_adapters
    from vidmusician.errors import AdapterError
    from vidmusician.random_backbones import tiny_musicgen

    vm = attach_adapters(tiny_musicgen(), tiny_config(tiny_musicgen()))
    for kwargs, words in [(dict(texts=[5]), "texts[0] must be a string (or None), got int"),
                          (dict(on_step=5), "on_step must be a function on_step(done, total) (or None), got int"),
                          (dict(seed=True), "seed must be an integer, got True"),
                          (dict(duration=True), "duration must be a number of seconds, got True")]:
        with pytest.raises(ConfigError) as exc:
            vm.generate([None], **{"duration": 1.0, **kwargs})
        assert str(exc.value).startswith(words), exc.value
    with pytest.raises(ConfigError, match="^videos must be a list \\(one entry per sample\\), got int$"):
        vm.generate(5)
    for call in (lambda: vm.make_batch(["clip.mp4"]), lambda: vm.set_video([None, torch.zeros(3, 8)])):
        with pytest.raises(ConfigError, match=r"^video \d of the batch: expected VideoFeatures or None, got (str|Tensor)$"):
            call()
    wav = vm.generate((v for v in [None, None]), duration=0.1)
    assert wav.shape[0] == 2  # a generator of videos is read once
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file; an adapter is saved as a folder"):
        vm.save_pretrained(tmp_path / "file")
    other = tiny_musicgen()
    other.lm.transformer.layers = other.lm.transformer.layers[:1]  # 'tiny', another shape
    with pytest.raises(AdapterError, match=r"load the 'tiny' the adapter was made for \(this one has another shape\)"):
        attach_adapters(other, vm.config)


def test_generate_many_refuses_the_meta_device_before_any_video_is_read(tmp_path):
    from vidmusician import generate_many

    with pytest.raises(ConfigError, match="^device 'meta' holds no weights to generate with; use cpu or cuda$"):
        generate_many([tmp_path / "absent.mp4"], tmp_path / "out", device="meta")
    assert not (tmp_path / "out").exists()
