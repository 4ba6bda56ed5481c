"""Training checks what it reads: damaged datasets, recipes and adapter configs stop it with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidmusician import VidMusician
from vidmusician.training.dataset import INDEX_NAME, SHARD_DIR, DatasetMeta, PreparedDataset, ShardWriter, read_jsonl
from vidmusician.errors import DataError
from vidmusician.random_backbones import tiny_musicgen
from vidmusician.video.features import VideoFeatures
from vidmusician.training.model_setup import optimizer_groups
from vidmusician.training.train import main
from vidmusician.training.train_state import STATE_NAME, latest_checkpoint

FRAMES, CARD = 100, 400  # 2 s windows at the tiny codec's 50 Hz


def window(seed: int, codes=None):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, CARD, (4, FRAMES), generator=g) if codes is None else codes
    feats = VideoFeatures(torch.randn(2, 32, generator=g), torch.rand(50, 16, generator=g), 1.0, 25.0, 2.0, "tiny")
    return 0.0, codes, feats


@pytest.fixture
def data(tmp_path) -> Path:
    return random_dataset(tmp_path / "data")


def random_dataset(root: Path) -> Path:
    """Eight sources of one random window each (tiny backbone and encoder), in shards of two windows."""
    root.mkdir()
    DatasetMeta("tiny", 32000, 1, 50.0, 4, CARD, "tiny", 32, 16, 1.0, 25.0, 2.0, 2.0).save(root)
    writer = ShardWriter(root, shard_windows=2)
    for i in range(8):
        writer.add({"source": f"v{i}", "split": "train" if i < 6 else "holdout", "text": None}, [window(i)])
    writer.flush()
    return root


def train(data: Path, tmp_path: Path, capsys, *sets: str) -> tuple[int, str]:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stage": 1, "batch_size": 2, "max_steps": 2, "warmup_steps": 1, "num_workers": 0,
                                  "eval_every": 1000, "save_every": 1000, "gradient_checkpointing": False,
                                  "adapter": {"memory_dim": 32, "attn_dim": 16, "attn_heads": 2}}))
    capsys.readouterr()
    args = ["--recipe", str(recipe), "--data", str(data), "--output", str(tmp_path / "run"), "--backbone", "tiny"]
    code = main(args + [x for s in sets for x in ("--set", s)])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(n in err for n in needles), err


def test_an_intact_dataset_trains(data, tmp_path, capsys):
    code, err = train(data, tmp_path, capsys, "weight_decay=0.1")
    assert code == 0, err
    rows = read_jsonl(data / INDEX_NAME)
    assert all(isinstance(r["shard_crc32"], int) and r["shard_bytes"] > 0 for r in rows)
    # With decay on, the run's optimizer holds optimizer_groups' split (test_optimizer_groups).
    saved = json.loads((latest_checkpoint(tmp_path / "run") / STATE_NAME).read_text())["param_groups"]
    vm = VidMusician.from_pretrained(tmp_path / "run" / "adapter", backbone=tiny_musicgen())
    vm.set_stage(1)
    names = {id(p): n for n, p in vm.lm.named_parameters()}
    want = [([names[id(p)] for p in g["params"]], g["weight_decay"]) for g in optimizer_groups(vm, 0.1)]
    assert [(g["params"], g["weight_decay"]) for g in saved] == want
    assert "video_inputs.memory.pos" in want[1][0]  # no decay on the positions


def test_a_damaged_index_line_is_named(data, tmp_path, capsys):
    lines = (data / INDEX_NAME).read_text().splitlines()
    lines[2] = lines[2][:-10] + "#garbage#"
    (data / INDEX_NAME).write_text("\n".join(lines) + "\n")
    one_line_error(*train(data, tmp_path, capsys), f"{INDEX_NAME}: line 3 is damaged", "delete that line")


def test_a_torn_last_line_is_what_a_kill_leaves_and_is_dropped(data):
    from vidmusician.training.dataset import append_jsonl

    index = data / INDEX_NAME
    whole = index.read_text()
    index.write_text(whole + whole.splitlines()[0][:20])  # a kill mid-append
    assert len(read_jsonl(index)) == 8
    append_jsonl(index, [{"source": "x"}])  # the torn piece is cut off, never left mid-file
    assert index.read_text() == whole + '{"source": "x"}\n'


def test_a_shard_overwritten_with_garbage_is_caught_by_its_checksum(data, tmp_path, capsys):
    shard = data / SHARD_DIR / "000001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-64:] = bytes(64)  # the header stays valid; the tensor bytes do not
    shard.write_bytes(bytes(raw))
    one_line_error(*train(data, tmp_path, capsys), "000001.safetensors: damaged shard", "checksum",
                   "rerun `vidmusician prepare`")


def test_a_cut_short_shard_is_caught_by_its_size(data):
    shard = data / SHARD_DIR / "000000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match="bytes, .* were written"):
        PreparedDataset(data, "train")[0]


def test_a_shard_cut_short_stops_training_before_its_first_step(data, tmp_path, capsys):
    """The holdout's shard, read only after the last step: found at the start, before any step or checkpoint."""
    shard = data / SHARD_DIR / "000003.safetensors"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:-100])
    one_line_error(*train(data, tmp_path, capsys), "000003.safetensors: damaged shard",
                   f"{size - 100} bytes, {size} were written")
    assert not (tmp_path / "run" / "checkpoints").exists()
    shard.unlink()
    one_line_error(*train(data, tmp_path, capsys), "000003.safetensors: damaged shard (missing)")


def test_prepare_verify_reads_every_shard(tmp_path, capsys):
    """A shard overwritten in place (same size) is found by ``prepare --verify``, on a dataset already prepared."""
    import numpy as np
    from media import flash_video

    from vidmusician import cli

    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        flash_video(src / f"v{i}.mp4", [0.5], 2.0, size=32,
                    audio=np.random.default_rng(i).uniform(-0.5, 0.5, (1, 64000)).astype(np.float32))
    args = ["prepare", str(src), str(tmp_path / "ds"), "--backbone", "tiny", "--encoder", "tiny", "--window", "1",
            "--hop", "1", "--holdout", "0"]
    assert cli.main(args) == 0
    assert cli.main(args + ["--verify"]) == 0
    assert "verified 2 shards, 4 windows: intact" in capsys.readouterr().out
    shard = sorted((tmp_path / "ds" / SHARD_DIR).iterdir())[1]
    raw = bytearray(shard.read_bytes())
    raw[-64:] = bytes(64)
    shard.write_bytes(bytes(raw))
    assert cli.main(args) == 0  # nothing to prepare: the damage goes unseen
    capsys.readouterr()
    assert cli.main(args + ["--verify"]) == 2
    err = capsys.readouterr().err
    assert f"{shard.name}: damaged shard (its checksum differs" in err and len(err.strip().splitlines()) == 1, err


def test_codes_outside_the_codebook_are_named_even_without_a_checksum(tmp_path):
    """A dataset written before the integrity record (format 1): the values themselves are checked."""
    root = tmp_path / "old"
    root.mkdir()
    DatasetMeta("tiny", 32000, 1, 50.0, 4, CARD, "tiny", 32, 16, 1.0, 25.0, 2.0, 2.0, format_version=1).save(root)
    writer = ShardWriter(root)
    bad = torch.full((4, FRAMES), 7)
    bad[2, 50] = CARD + 5
    writer.add({"source": "v0", "split": "train", "text": None}, [window(0, codes=bad)])
    writer.flush()
    rows = [{k: v for k, v in r.items() if not k.startswith("shard_")} for r in read_jsonl(root / INDEX_NAME)]
    (root / INDEX_NAME).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"window 0 has codes outside the codebook of {CARD}"):
        PreparedDataset(root, "train")[0]


def test_a_code_equal_to_the_codebook_size_is_refused_naming_its_shard(tmp_path):
    """Code ``card`` is the LM's special token (the delay pattern's filler): the embedding
    takes it, the loss cannot (a raw cross-entropy error, or a CUDA assert). The shard
    check names it, whatever the checksum says (here the shard was written with it)."""
    root = tmp_path / "data"
    root.mkdir()
    DatasetMeta("tiny", 32000, 1, 25.0, 4, CARD, "tiny", 32, 16, 1.0, 25.0, 4.0, 4.0).save(root)
    writer = ShardWriter(root)
    codes = torch.full((4, FRAMES), CARD - 1)  # the largest code is fine
    writer.add({"source": "v0", "split": "train", "text": None}, [window(0, codes=codes.clone())])
    codes[1, 10] = CARD
    writer.add({"source": "v1", "split": "train", "text": None}, [window(1, codes=codes)])
    writer.flush()
    data = PreparedDataset(root, "train")
    assert int(data[0].codes.max()) == CARD - 1
    with pytest.raises(DataError, match=rf"{SHARD_DIR}/000000.safetensors: damaged shard \(window 1 has codes "
                                        rf"outside the codebook of {CARD}\)"):
        data[1]


@pytest.mark.parametrize("setting, needle", [
    ("batch_size=0", "batch_size must be a whole number in [1, 2147483647], got 0"),
    ("lr=1e300", "lr must be a number in (0, 1], got 1e+300"),
    ("max_steps=2.5", "max_steps must be a whole number"),
    ("adapter.attn_heads=0", "attn_heads must be a whole number in [1, 2147483647], got 0"),
])
def test_numbers_no_one_meant_are_refused(data, tmp_path, capsys, setting, needle):
    one_line_error(*train(data, tmp_path, capsys, setting), needle)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_recipe_that_is_not_an_object_is_refused(tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text("[1, 2]")
    code = main(["--recipe", str(recipe), "--data", str(tmp_path), "--output", str(tmp_path / "run")])
    one_line_error(code, capsys.readouterr().err, f"{recipe}: expected a JSON object")


@pytest.mark.parametrize("text, needle", [("[1]", "expected a JSON object"),
                                          ('{"attn_heads": 0}', "attn_heads must be a whole number"),
                                          ('{"global_fps": 1e300}', "global_fps must be a number in (0, 1000]"),
                                          ('{"rhythm_context": -1}', "rhythm_context must be a whole number in [0, 100]"),
                                          ('{"rhythm_compression": 0}', "rhythm_compression must be a number in (0, ")])
def test_an_adapter_config_of_the_wrong_shape_is_refused(tmp_path, text, needle):
    from vidmusician.config import AdapterConfig
    from vidmusician.errors import ConfigError

    (tmp_path / "adapter_config.json").write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")) as info:
        AdapterConfig.load(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "adapter_config.json"))
