"""A training run's start on a user's own data: the holdout leaves training a window, the codes
come from the backbone's own codec, and a run that fails at start leaves no run folder behind."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from media import flash_video

from vidmusician.backbones import load_codec
from vidmusician.training.codec_identity import codec_identity
from vidmusician.training.dataset import INDEX_NAME, META_NAME, SHARD_DIR, DatasetMeta, PreparedDataset, ShardWriter
from vidmusician.training.prepare import holdout_ids, keep_a_training_window, prepare
from vidmusician.training.train import main
from vidmusician.video.features import VideoFeatures

REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone="tiny", encoder="tiny", progress=False, device="cpu")
# A one-step stage-1 run of tiny adapters (the tiny encoder's features are narrow).
ONE_STEP = ["--recipe", str(REPO / "recipes" / "stage1_semantic.json")] + [
    a for s in ("max_steps=1", "warmup_steps=0", "batch_size=1", "num_workers=0", "save_every=1", "eval_every=1",
                "adapter.memory_dim=32", "adapter.attn_dim=16", "adapter.attn_heads=2") for a in ("--set", s)]


def music_video(path: Path, seconds: float = 2.0, seed: int = 0) -> Path:
    noise = np.random.default_rng(seed).uniform(-0.8, 0.8, int(seconds * 32000)).astype(np.float32)
    return flash_video(path, [0.5], seconds, audio=noise)


@pytest.fixture(scope="module")
def one_window(tmp_path_factory):
    """A dataset of one 2 s music video, one window, prepared with the tiny backbone and the default holdout."""
    src = tmp_path_factory.mktemp("one")
    music_video(src / "only.mp4")
    out = src.parent / (src.name + "-data")
    return out, prepare(src, out, window=2.0, hop=2.0, holdout=0.05, **TINY)


def train(tmp_path, data, *extra, output="run"):
    """Trains in this process on one thread; returns the exit status and the run folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / output
        return main(ONE_STEP + ["--data", str(data), "--output", str(out), *map(str, extra)]), out
    finally:
        torch.set_num_threads(threads)


def fake_dataset(root: Path, splits: dict[str, str], frames: int = 100) -> Path:
    """A dataset of the tiny backbone's shapes: one 2 s window per source, in the split given."""
    root.mkdir(parents=True)
    DatasetMeta("tiny", 32000, 1, 50.0, 4, 400, "tiny", 32, 16, 1.0, 25.0, 2.0, 2.0).save(root)
    writer = ShardWriter(root)
    g = torch.Generator().manual_seed(0)
    for source, split in splits.items():
        feats = VideoFeatures(torch.randn(2, 32, generator=g), torch.rand(50, 16, generator=g), 1.0, 25.0, 2.0, "tiny")
        writer.add({"source": source, "split": split, "text": None},
                   [(0.0, torch.randint(0, 400, (4, frames), generator=g), feats)])
    writer.flush()
    return root


def splits(root: Path) -> dict[str, str]:
    return {r["source"]: r["split"] for r in PreparedDataset(root, "train").rows + PreparedDataset(root, "holdout").rows}


# ---- the holdout leaves training a window ---------------------------------------------------------


def test_a_dataset_of_one_window_has_no_holdout_and_says_so_then_trains(one_window, tmp_path):
    data, report = one_window
    assert splits(data) == {"only.mp4": "train"}
    assert report.holdout_note.startswith("no holdout: one video with windows")
    code, out = train(tmp_path, data, "--backbone", "tiny")
    assert code == 0 and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()][-1] == 1


def test_when_the_videos_for_training_fail_the_held_one_moves_to_training(tmp_path):
    """Two videos: the holdout takes one before either is read; the other is not a video. The dataset
    must still have a training window (and say why the holdout is empty)."""
    src = tmp_path / "src"
    src.mkdir()
    held, = holdout_ids(["a.mp4", "b.mp4"], 0.05)
    music_video(src / held)
    (src / ({"a.mp4", "b.mp4"} - {held}).pop()).write_bytes(b"not a video")
    report = prepare(src, tmp_path / "data", window=2.0, hop=2.0, holdout=0.05, **TINY)
    assert len(report.failed) == 1 and report.prepared == 1
    assert splits(tmp_path / "data") == {held: "train"}
    assert report.splits == {"train": (1, len(PreparedDataset(tmp_path / "data", "train").rows)), "holdout": (0, 0)}
    assert report.holdout_note == (f"no holdout: {held} was moved to training, where no other video has a window "
                                   f"(training runs without a holdout loss)")


def test_the_rule_moves_the_video_the_holdout_took_last_and_only_when_training_has_none(tmp_path):
    ids = [f"v{i}" for i in range(4)]
    held = holdout_ids(ids, 0.75)
    assert len(held) == 3
    # Training has a window: nothing moves, nothing is said.
    root = fake_dataset(tmp_path / "kept", {s: "holdout" if s in held else "train" for s in ids})
    before = (root / INDEX_NAME).read_bytes()
    assert keep_a_training_window(root, 0.75) is None and (root / INDEX_NAME).read_bytes() == before
    # The training video failed: of the three held, the last the holdout took moves.
    root = fake_dataset(tmp_path / "moved", {s: "holdout" for s in sorted(held)})
    note = keep_a_training_window(root, 0.75)
    last = holdout_ids(ids, 0.75) - holdout_ids(ids, 0.5)
    assert note == f"holdout: {last.pop()} was moved to training, where no other video has a window"
    assert sorted(splits(root).values()) == ["holdout", "holdout", "train"]
    assert holdout_ids(ids, 0.5) == {s for s, split in splits(root).items() if split == "holdout"}
    # No holdout asked for: nothing to say.
    root = fake_dataset(tmp_path / "none", {"v0": "train"})
    assert keep_a_training_window(root, 0.0) is None


def test_training_names_the_holdout_when_it_holds_the_windows(tmp_path, capsys):
    """Datasets written before the rule: the error says where the windows went and what to run."""
    data = fake_dataset(tmp_path / "all-held", {"a": "holdout", "b": "holdout"})
    code, out = train(tmp_path, data, "--backbone", "tiny")
    err = capsys.readouterr().err
    assert code == 2 and "no training window: the holdout" in err and "holds all 2" in err
    assert "run the same `vidmusician prepare` again" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    data = fake_dataset(tmp_path / "one-each", {"a": "holdout", "b": "train"})
    code, out = train(tmp_path, data, "--backbone", "tiny", "--set", "batch_size=2")
    err = capsys.readouterr().err
    assert code == 2 and "has 1 windows, fewer than one global batch (2)" in err
    assert "1 more in the holdout" in err and not out.exists()


# ---- the codec that made the codes -----------------------------------------------------------------


def test_training_refuses_codes_of_another_codec(one_window, tmp_path, capsys):
    data, _ = one_window
    assert DatasetMeta.load(data).codec_id == "built:tiny"
    code, out = train(tmp_path, data, "--backbone", "tiny-learned")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "encoded by the codec of 'tiny', not by that of backbone 'tiny-learned'" in err
    assert "prepare the data again with --backbone tiny-learned" in err
    assert not out.exists()


def test_a_dataset_from_before_the_codec_was_recorded_still_trains(one_window, tmp_path):
    """No codec recorded: only the shapes are checked (tiny-learned's codes have tiny's shapes)."""
    data = tmp_path / "old"
    shutil.copytree(one_window[0], data)
    meta = json.loads((data / META_NAME).read_text())
    del meta["codec_id"]
    (data / META_NAME).write_text(json.dumps(meta))
    assert DatasetMeta.load(data).codec_id is None
    code, out = train(tmp_path, data, "--backbone", "tiny-learned")
    assert code == 0 and (out / "adapter").is_dir()


def test_a_loaded_codec_is_known_by_its_weights_and_a_built_one_by_its_name():
    codec = load_codec("tiny", device="cpu")
    first = codec_identity("exports/one", codec)
    assert first.startswith("sha256:") and first == codec_identity("elsewhere/two", copy.deepcopy(codec))
    nudged = copy.deepcopy(codec)
    with torch.no_grad():
        weight = next(p for p in nudged.parameters() if p.dim() > 1)
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(1.0))  # one bit
    assert codec_identity("exports/one", nudged) != first
    assert codec_identity("tiny", codec) == codec_identity("tiny-t5", codec) == "built:tiny"
    assert codec_identity("tiny-learned", codec) != codec_identity("tiny", codec)
    assert codec_identity("random-small", codec) == codec_identity("random-large", codec)


# ---- a run that fails at start leaves no run folder ----------------------------------------------


def damaged(data: Path, to: Path) -> Path:
    """A copy whose only shard has one byte changed in its tensors: found when the first step reads it."""
    shutil.copytree(data, to)
    shard, = (to / SHARD_DIR).glob("*.safetensors")
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return to


def test_a_run_failing_before_its_first_step_takes_back_what_it_wrote(one_window, tmp_path, capsys):
    data = damaged(one_window[0], tmp_path / "damaged")
    code, out = train(tmp_path, data, "--backbone", "tiny", output="runs/stage1")
    assert code == 2 and "damaged shard" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # the run created runs/ too
    # A folder that was there: what was in it stays, what the run wrote goes.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    code, out = train(tmp_path, data, "--backbone", "tiny", output="mine")
    assert code == 2 and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_resumed_run_that_fails_at_start_is_kept_whole(one_window, tmp_path, capsys):
    data = one_window[0]
    code, out = train(tmp_path, data, "--backbone", "tiny")
    assert code == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert "checkpoints/latest" in files and "recipe.json" in files
    code, _ = train(tmp_path, damaged(data, tmp_path / "damaged"), "--backbone", "tiny", "--resume",
                    "--set", "max_steps=2")
    assert code == 2 and "damaged shard" in capsys.readouterr().err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == files


def test_a_diverged_training_stops_before_its_checkpoint_and_names_the_last_good_one(one_window, tmp_path, capsys,
                                                                                     monkeypatch):
    data = one_window[0]
    code, out = train(tmp_path, data, "--backbone", "tiny")
    assert code == 0
    step = torch.optim.AdamW.step

    def diverging(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging)
    code, _ = train(tmp_path, data, "--backbone", "tiny", "--resume", "--set", "max_steps=2")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "step 2: adapter weight " in err and "holds NaN or infinite values: the training diverged" in err
    assert "the last checkpoint, step-00000001, is kept" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000001"]
