"""The default device and seeded blocks (vidmusician.runtime)."""

import pytest
import torch

from vidmusician.errors import ConfigError
from vidmusician.runtime import default_device, seeded


def _draws(seed, n):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def test_seeded_draws_repeat_and_leave_the_callers_stream_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with seeded(123):
        first = torch.rand(4)
    with seeded(123, device="cpu"):
        second = torch.rand(4)
    assert torch.equal(first, second)
    assert torch.equal(first, _draws(123, 4))
    with seeded(124):
        assert not torch.equal(torch.rand(4), first)
    assert torch.equal(torch.rand(3), expected)  # as if the blocks had not run


def test_seeded_with_no_seed_draws_from_the_callers_stream():
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    with seeded(None):
        drawn = torch.rand(2)
    assert torch.equal(drawn, expected)


@pytest.mark.cuda  # and on a GPU, its device names
def test_default_device_is_one_type():
    assert default_device("cpu") == torch.device("cpu")
    assert default_device(torch.device("cpu")) == torch.device("cpu")
    if torch.cuda.device_count() > 1:
        assert str(default_device("cuda:1")) == "cuda:1"  # the name audiocraft's loaders compare with
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_a_device_this_machine_does_not_have_is_one_line():
    with pytest.raises(ConfigError, match=r"^device 'foo': not a device name; use cpu, cuda or cuda:N$"):
        default_device("foo")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last (cuda:0 on a machine without)
    with pytest.raises(ConfigError, match=f"^device '{missing}': "):
        default_device(missing)


@pytest.mark.parametrize("args, needle", [
    (["--device", "gpu0"], "device 'gpu0': not a device name; use cpu, cuda or cuda:N"),
    (["--seed", str(2 ** 64)], f"seed must be an integer from {-2 ** 63} to {2 ** 64 - 1}, got {2 ** 64}"),
])
def test_generate_refuses_a_device_or_seed_before_it_loads(args, needle, tmp_path, capsys, monkeypatch):
    from media import flash_video

    import vidmusician.pipeline as pipeline
    from vidmusician import cli

    loaded = []
    monkeypatch.setattr(pipeline, "load_for_generation", lambda *a, **k: loaded.append(a))
    video = flash_video(tmp_path / "clip.mp4", [0.3], 1.0, size=32)
    out = tmp_path / "out.wav"
    assert cli.main(["generate", str(video), "--backbone", "tiny", "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert not out.exists() and loaded == []


def test_python_generation_refuses_seeds_out_of_range_and_no_videos(tiny):
    from conftest import tiny_config
    from vidmusician import attach_adapters

    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    for seed in (2 ** 64, [1, -2 ** 63 - 1]):
        with pytest.raises(ConfigError, match="seed must be an integer from"):
            vm.generate([None, None], duration=0.1, seed=seed)
    assert vm.generate([None], duration=0.1, seed=2 ** 64 - 1).shape[0] == 1  # the ends of the range are seeds
    with pytest.raises(ConfigError, match="^videos is empty: give one entry"):
        vm.generate([], duration=1.0)


def test_many_videos_and_prepare_refuse_a_device_before_any_work(tmp_path):
    from media import flash_video

    from vidmusician import generate_many
    from vidmusician.training.prepare import prepare

    videos = tmp_path / "videos"
    videos.mkdir()
    flash_video(videos / "a.mp4", [0.3], 1.0, size=32)
    with pytest.raises(ConfigError, match="^device 'gpu0': not a device name"):
        generate_many(videos, tmp_path / "scored", backbone="tiny", device="gpu0")
    assert not (tmp_path / "scored").exists()
    with pytest.raises(ConfigError, match="^device 'gpu0': not a device name"):
        prepare(videos, tmp_path / "data", backbone="tiny", encoder="tiny", device="gpu0")
    assert not (tmp_path / "data").exists()


def test_loading_an_encoder_leaves_the_applications_logging_to_it(tmp_path):
    """open_clip's root-logger calls configure logging when nothing has; the application's own
    basicConfig afterwards must still take effect (a fresh process: pytest configures the root)."""
    import subprocess
    import sys

    log = tmp_path / "app.log"
    code = ("import logging; from vidmusician import load_encoder; load_encoder('tiny', device='cpu'); "
            "assert logging.root.handlers == [], logging.root.handlers; "
            f"logging.basicConfig(level=logging.INFO, filename={str(log)!r}, format='APP %(message)s'); "
            "logging.getLogger('app').info('hello')")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    assert log.read_text() == "APP hello\n"


def test_loading_an_adapter_leaves_the_callers_random_stream_alone(tmp_path):
    from conftest import save_tiny_adapter
    from vidmusician import VidMusician
    from vidmusician.random_backbones import tiny_musicgen

    folder = save_tiny_adapter(tmp_path / "adapter")
    backbone = tiny_musicgen()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    VidMusician.from_pretrained(folder, backbone=backbone)
    assert torch.equal(torch.rand(3), expected)
