"""One line for any exception (vidmusician.errors.one_line), and the field-by-field difference line."""

import dataclasses
import errno
import sys

import pytest

from vidmusician.errors import DataError, one_line, shorten


def test_project_error_is_its_message_also_from_a_dataloader_worker():
    from torch.utils.data._utils import ExceptionWrapper

    error = DataError("index.jsonl: line 3 is damaged; delete that line")
    assert one_line(error) == str(error)
    try:
        raise error
    except DataError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(DataError) as raised:  # torch re-raises the type with its traceback as the text
        wrapped.reraise()
    assert "\n" in str(raised.value)
    assert one_line(raised.value) == "index.jsonl: line 3 is damaged; delete that line"


@pytest.mark.parametrize("exc, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.safetensors"),
     "/runs/x/model.safetensors: the disk is full; free space or write elsewhere (earlier outputs were left intact)"),
    (OSError(errno.ENOSPC, "No space left on device"),
     "the disk is full; free space or write elsewhere (earlier outputs were left intact)"),
    (OSError(errno.EIO, "Input/output error", "/mnt/disk/a.mp4"), "/mnt/disk/a.mp4: Input/output error"),
    (OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection."),
     "We couldn't connect to 'https://huggingface.co'."),
], ids=["errno-with-path", "errno-alone", "unknown-errno", "library-oserror"])
def test_file_system_failures_say_the_path_and_what_to_do(exc, line):
    assert one_line(exc) == line


def test_library_reasons_are_their_readable_first_line():
    decord = RuntimeError("Traceback (most recent call last):\n  [bt] (1) libdecord.so(+0x1234)\n"
                          "  File \"../src/video/video_reader.cc\", line 83\n"
                          "DECORDError: [16:21:15] /github/workspace/src/video/video_reader.cc:83: "
                          "ERROR opening: clip.mp4, Invalid data found when processing input")
    assert one_line(decord) == "ERROR opening: clip.mp4, Invalid data found when processing input"
    assert one_line(RuntimeError("[16:21:15] /src/a.cc:9: Check failed: n > 0")) == "Check failed: n > 0"
    assert one_line(ValueError("first  line\n second line")) == "first line"
    assert one_line(ValueError("x" * 500)) == "x" * 500  # one word: never cut in two
    assert one_line(KeyError()) == "KeyError"


def test_a_long_reason_is_cut_between_words():
    """open_clip's download error, as `eval` quoted it cut at 200 characters: '... to locate the f)'."""
    reason = ("Failed to download weights for tag 'openai': Failed to download file (open_clip_pytorch_model.bin) "
              "for timm/vit_base_patch32_clip_224.openai. Last error: An error happened while trying to locate the "
              "file on the Hub and we cannot find the requested files in the local cache.")
    line = one_line(RuntimeError(reason))
    assert len(line) <= 200 and line.endswith(" ...")
    kept = line.removesuffix(" ...")
    assert reason.startswith(kept + " ")  # whole words, up to a space of the original
    assert kept.endswith("while trying to locate")
    for limit in range(1, len(reason) + 2):
        kept = shorten(reason, limit).removesuffix(" ...")
        assert reason == kept or reason.startswith(kept + " "), limit
        assert len(shorten(reason, limit)) <= max(limit, len("Failed ...")), limit


def test_pyav_reason_drops_its_errno_and_file_name(tmp_path):
    import av

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(av.FFmpegError) as raised:
        av.open(str(junk))
    assert str(junk) in str(raised.value)
    assert one_line(raised.value) == "Invalid data found when processing input"


def test_differing_fields_name_each_difference_in_one_line():
    from dataclasses import dataclass

    from vidmusician.errors import differing_fields

    @dataclass
    class Spec:
        dim: int = 32
        num_layers: int = 4
        frame_rate: float = 50.0

    adapter, backbone = Spec(), Spec(dim=64, frame_rate=25.0)
    assert differing_fields(adapter, backbone, sides=("adapter", "backbone")) == (
        "dim: adapter 32 vs backbone 64; frame_rate: adapter 50.0 vs backbone 25.0")
    assert differing_fields(adapter, backbone, ("frame_rate", "num_layers")) == "frame_rate: 50.0 vs 25.0"
    assert differing_fields({"dim": 64, "window": 2.0}, adapter, ["dim"], ("features", "adapter")) == (
        "dim: features 64 vs adapter 32")
    assert differing_fields({"window": 2.0}, {"window": 3.0}) == "window: 2.0 vs 3.0"
    assert differing_fields(adapter, Spec()) == ""


def test_features_of_the_adapters_own_encoder_that_do_not_fit_say_to_size_the_config(tiny, tmp_path):
    """A config that names the features' encoder but kept another encoder's widths
    (``config_for_backbone(musicgen, encoder="tiny")``): extracting again cannot help, so the
    line says how to size the config instead, given features or a video file to encode."""
    import torch

    from conftest import TINY_GLOBAL_DIM, TINY_LOCAL_DIM, tiny_config
    from media import flash_video
    from vidmusician.errors import ConfigError
    from vidmusician.model import attach_adapters
    from vidmusician.video.features import VideoFeatures

    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen, global_dim=512, local_dim=49))

    def features(encoder):
        return VideoFeatures(torch.randn(2, TINY_GLOBAL_DIM), torch.rand(50, TINY_LOCAL_DIM), 1.0, 25.0, 2.0, encoder)

    sized = (rf"features of encoder 'tiny' do not fit the adapter \(global_dim: features {TINY_GLOBAL_DIM} vs "
             rf"adapter 512; local_dim: features {TINY_LOCAL_DIM} vs adapter 49\): its config names that encoder but "
             rf"is sized for another; size it to the features, e\.g\. config_for_backbone\(musicgen, encoder='tiny', "
             rf"global_dim={TINY_GLOBAL_DIM}, local_dim={TINY_LOCAL_DIM}\)$")
    with pytest.raises(ConfigError, match=rf"^video {sized}"):
        vm.make_batch([features("tiny"), None])
    with pytest.raises(ConfigError, match=r"^video features do not fit the adapter \(.*\); extract them with "
                                          r"encoder 'tiny'$"):
        vm.make_batch([features("ViT-B-16:openai")])  # another encoder's features: extract with the adapter's
    clip = flash_video(tmp_path / "clip.mp4", [0.5], duration=1.0)  # encoded by the adapter's encoder: same line
    with pytest.raises(ConfigError, match=rf"^visual encoder 'tiny': {sized}"):
        vm.generate([str(clip)], duration=0.5, progress=False)


def test_fit_checks_name_the_differing_fields_and_the_fix(tiny, tmp_path):
    import types

    import torch

    from conftest import TINY_GLOBAL_DIM, TINY_LOCAL_DIM, random_video_batch, tiny_config
    from vidmusician.training.dataset import DatasetMeta
    from vidmusician.video.features import VideoFeatures
    from vidmusician.video.encoder_specs import check_encoder_fit
    from vidmusician.errors import ConfigError
    from vidmusician.model import attach_adapters
    from vidmusician.training.recipe import Recipe
    from vidmusician.training.model_setup import build_model

    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    batch = random_video_batch(1, [True])
    batch.global_feats = batch.global_feats[..., :8]
    with pytest.raises(ConfigError, match=rf"^video features do not fit the adapter \(global_dim: features 8 vs "
                                          rf"adapter {TINY_GLOBAL_DIM}\); extract them with encoder 'tiny'$"):
        vm.make_batch(batch)
    from dataclasses import replace
    twice = replace(random_video_batch(2, [True, False]), global_fps=2.0)  # the memory's positions are seconds
    with pytest.raises(ConfigError, match=r"^video features have 2 global frames per second, the adapter reads 1; "
                                          r"extract them at the adapter's rate \(global_fps=1; --global-fps 1 on the "
                                          r"command line\)$"):
        vm.make_batch(twice)
    vm.make_batch(replace(random_video_batch(2, [False, False]), global_fps=2.0))  # no video: no rate to check
    # The change signal over 0.1 s is not the 40 ms one the rhythm adapter learned.
    at = {fps: VideoFeatures(torch.randn(2, TINY_GLOBAL_DIM), torch.rand(round(2 * fps), TINY_LOCAL_DIM), 1.0, fps,
                             2.0, "tiny") for fps in (10.0, 25.0)}
    with pytest.raises(ConfigError, match=r"^video features have 10 local frames per second, the adapter reads 25; "
                                          r"extract them at the adapter's rate \(local_fps=25; --local-fps 25 on the "
                                          r"command line\)$"):
        vm.make_batch([at[25.0], None, at[10.0]])
    vm.make_batch([at[25.0], None])
    with pytest.raises(ConfigError, match=rf"^f.safetensors: features from encoder 'ViT-B-16:openai' do not fit the "
                                          rf"adapter trained on 'tiny' \(local_dim: features 8 vs adapter "
                                          rf"{TINY_LOCAL_DIM}\); use the adapter's encoder 'tiny'"):
        check_encoder_fit(vm.config, "f.safetensors", "ViT-B-16:openai", None, (TINY_GLOBAL_DIM, 8))

    meta = DatasetMeta(backbone="tiny", sample_rate=32000, channels=1, frame_rate=50.0, n_q=4, card=2048,
                       encoder="tiny", global_dim=TINY_GLOBAL_DIM, local_dim=TINY_LOCAL_DIM, global_fps=1.0,
                       local_fps=25.0, window=4.0, hop=4.0)
    args = types.SimpleNamespace(backbone=None, data="ds", init=None)
    card = musicgen.lm.card
    with pytest.raises(DataError, match=rf"^ds: prepared with the codec of 'tiny', which does not match backbone "
                                        rf"'tiny' \(card: data 2048 vs backbone {card}\); prepare the data with"):
        build_model(args, Recipe(), meta, "cpu")
    # An adapter to go on training on data of another global frame rate: its memory counts its own seconds.
    init = vm.save_pretrained(tmp_path / "adapter")
    meta = dataclasses.replace(meta, card=card, global_fps=2.0, window=2.0, hop=2.0)
    args = types.SimpleNamespace(backbone=None, data="ds", init=str(init))
    with pytest.raises(DataError, match=r"^ds: prepared with 2 global frames per second, the adapter reads 1; "
                                        r"prepare it with --global-fps 1, or train a fresh adapter on it$"):
        build_model(args, Recipe(), meta, "cpu")
    build_model(types.SimpleNamespace(backbone=None, data="ds", init=None), Recipe(), meta, "cpu")  # a fresh one
    # ... and of another local frame rate: its rhythm adapter learned change over 40 ms, not 0.1 s.
    meta = dataclasses.replace(meta, global_fps=1.0, local_fps=10.0)
    with pytest.raises(DataError, match=r"^ds: prepared with 10 local frames per second, the adapter reads 25; "
                                        r"prepare it with --local-fps 25, or train a fresh adapter on it$"):
        build_model(args, Recipe(), meta, "cpu")
    assert build_model(types.SimpleNamespace(backbone=None, data="ds", init=None), Recipe(), meta,
                       "cpu").config.local_fps == 10.0  # a fresh one reads the data's rate


def test_warnings_are_one_line_of_the_command_and_only_where_shown(capsys):
    """`vidmusician train` shows a library's warning from process 0 alone: the others would repeat it."""
    import warnings

    from vidmusician.errors import warnings_as_lines

    for rank in (0, 1):
        with warnings_as_lines("vidmusician train", shown=lambda: rank == 0):
            warnings.warn("the adapter was trained on backbone tiny-learned")
    assert capsys.readouterr().err == "vidmusician train: warning: the adapter was trained on backbone tiny-learned\n"
