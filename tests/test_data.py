"""Dataset preparation (`vidmusician prepare`) and the prepared dataset: shards, errors, reruns, windows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from media import flash_video, write_audio
from test_timing import reference

import vidmusician.backbones as backbones
import vidmusician.training.prepare as prepare_module
from vidmusician.cli import main
from vidmusician.random_backbones import tiny_musicgen
from vidmusician.training.dataset import (INDEX_NAME, Collate, DatasetMeta, MismatchedVideos, PreparedDataset,
                                         read_jsonl)
from vidmusician.errors import BackboneError, ConfigError, DataError
from vidmusician.audio_io import read_audio
from vidmusician.training.prepare import holdout_ids, list_sources, prepare, window_starts

TINY = dict(backbone="tiny", encoder="tiny", progress=False, device="cpu")


def noise_track(duration: float, seed: int, sample_rate: int = 32000) -> np.ndarray:
    """Loud noise: the tiny random codec gives it varied codes (silence encodes to one code)."""
    return (np.random.default_rng(seed).uniform(-0.8, 0.8, int(duration * sample_rate))).astype(np.float32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three good music videos (3, 5 and 2.5 s), one without audio, one that is not a video, a text file."""
    src = tmp_path_factory.mktemp("videos")
    for i, duration in enumerate([3.0, 5.0, 2.5]):
        flash_video(src / f"good{i}.mp4", [1.0], duration, audio=noise_track(duration, i))
    flash_video(src / "silent_film.mp4", [1.0], 2.0)
    (src / "broken.mp4").write_bytes(b"this is not a video")
    (src / "notes.txt").write_text("not a video: ignored")
    return src


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    report = prepare(folder, out, window=2.0, hop=1.0, holdout=0.3, **TINY)
    return out, report


def test_good_files_become_shards_and_bad_ones_are_listed(prepared):
    out, report = prepared
    assert (report.sources, report.prepared) == (5, 3)
    errors = {e["source"]: e["error"] for e in read_jsonl(out / "errors.jsonl")}
    assert set(errors) == {"silent_film.mp4", "broken.mp4"}
    assert "no audio stream" in errors["silent_film.mp4"]
    assert "not a readable video" in errors["broken.mp4"]
    rows = read_jsonl(out / INDEX_NAME)
    assert {r["source"] for r in rows} == {"good0.mp4", "good1.mp4", "good2.mp4"}
    assert all((out / "shards" / r["shard"]).is_file() for r in rows)


def test_windows_cover_each_clip_on_the_global_grid(prepared):
    out, _ = prepared
    starts = {}
    assert DatasetMeta.load(out).frame_rate == 50.0  # the tiny codec's, as the real one's
    for r in read_jsonl(out / INDEX_NAME):
        starts.setdefault(r["source"], []).append(r["start"])
        assert (r["seconds"], r["frames"]) == (2.0, 100)  # 2 s at 50 Hz
    # hop 1 s; the last window ends at the clip's end (rounded down to the 1 s grid)
    assert starts == {"good0.mp4": [0.0, 1.0], "good1.mp4": [0.0, 1.0, 2.0, 3.0], "good2.mp4": [0.0]}
    assert window_starts(1.5, 2.0, 1.0, 1.0) == ([0.0], 1.5)  # shorter than a window: one short window


def test_holdout_is_split_by_source(prepared, folder):
    out, _ = prepared
    split = {}
    for r in read_jsonl(out / INDEX_NAME):
        split.setdefault(r["source"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split.values())  # no video in both splits
    held = {source for source, s in split.items() if s == {"holdout"}}
    everything = [s.id for s in list_sources(folder)]
    assert held == holdout_ids(everything, 0.3) & set(split) and held and len(held) < len(split)
    assert len(holdout_ids(everything, 0.3)) == 2 and holdout_ids(everything, 0.01) < holdout_ids(everything, 0.3)


def test_cached_codes_and_features_are_those_of_the_window(prepared, folder):
    out, _ = prepared
    data = [PreparedDataset(out, split) for split in ("train", "holdout")]
    ex = next(d[i] for d in data for i, r in enumerate(d.rows) if r["source"] == "good1.mp4" and r["start"] == 2.0)
    cm = tiny_musicgen().compression_model
    wav = read_audio(folder / "good1.mp4", 32000, 1, align_to_video=True)
    frames = int(2 * cm.frame_rate)
    with torch.no_grad():
        codes, _ = cm.encode(wav[None, :, 64000:128000])
        elsewhere, _ = cm.encode(wav[None, :, 32000:96000])
    assert torch.equal(ex.codes, codes[0, :, :frames])
    assert not torch.equal(ex.codes, elsewhere[0, :, :frames])  # the check can tell windows apart
    # window [2 s, 4 s): local rows 50..99 of the whole video's 25 fps signal; global seconds 2 and 3
    from vidmusician.video.features import extract_features

    whole = extract_features(folder / "good1.mp4", "tiny", device="cpu")
    assert torch.allclose(ex.features.local_feats, whole.local_feats[50:100], atol=2e-3)
    assert torch.allclose(ex.features.global_feats, whole.global_feats[2:4], rtol=1e-2, atol=1e-2)


def test_rerun_does_no_work(prepared, folder, monkeypatch, tmp_path):
    out, _ = prepared
    shards = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    index = (out / INDEX_NAME).read_text()
    loads = []

    def spy(loader):
        def load(*args, **kwargs):
            loads.append(loader.__name__)
            return loader(*args, **kwargs)
        return load

    # Where prepare looks its loaders up, and the one that would load the LM.
    spied = ((prepare_module, "load_codec"), (backbones, "load_backbone"), (prepare_module, "load_encoder"))
    for module, name in spied:
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    report = prepare(folder, out, window=2.0, hop=1.0, holdout=0.3, **TINY)
    assert (report.already_done, report.prepared, report.failed) == (5, 0, [])
    assert loads == []  # nothing to do: no model is loaded
    assert (out / INDEX_NAME).read_text() == index
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == shards
    # The spies are where prepare loads its models: a run with work (retrying the two
    # failed sources, on a copy) goes through them, and loads the codec without the LM.
    copy = shutil.copytree(out, tmp_path / "ds")
    report = prepare(folder, copy, window=2.0, hop=1.0, holdout=0.3, retry_errors=True, **TINY)
    assert (report.already_done, len(report.failed)) == (3, 2)
    assert sorted(loads) == ["load_codec", "load_encoder"]


def test_rerun_with_other_settings_is_refused(prepared, folder):
    out, _ = prepared
    with pytest.raises(DataError, match="window: 2.0 vs 3.0"):
        prepare(folder, out, window=3.0, hop=1.0, **TINY)


def test_a_rerun_or_a_check_takes_the_datasets_own_settings(prepared, folder, capsys):
    """`prepare SRC OUT --verify` as the README writes it: the options the dataset was made with are left out."""
    out, _ = prepared
    assert main(["prepare", str(folder), str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "5 already done, 0 prepared" in printed and "intact" in printed
    train, held = PreparedDataset(out, "train").rows, PreparedDataset(out, "holdout").rows
    assert (len(train), len(held)) == (2, 5)  # the fixture's 3 good videos: 1 for training, 2 held out
    assert "  dataset: 2 training windows from 1 video, 5 holdout windows from 2 videos\n" in printed
    report = prepare(folder, out, progress=False)  # the library's too: no backbone, encoder, window, ... given
    assert (report.already_done, report.prepared) == (5, 0)


def test_a_model_that_fails_to_load_leaves_no_folder(folder, tmp_path, capsys):
    out = tmp_path / "new" / "ds"
    assert main(["prepare", str(folder), str(out), "--backbone", str(tmp_path / "no-backbone"), "--encoder", "tiny",
                 "--device", "cpu"]) == 2
    assert "no-backbone: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    assert main(["prepare", str(folder), str(tmp_path / "kept"), "--backbone", str(tmp_path / "no-backbone"),
                 "--encoder", "tiny", "--device", "cpu"]) == 2
    assert (tmp_path / "kept").is_dir()


def test_a_torn_index_is_repaired_and_the_source_redone(folder, tmp_path):
    out = tmp_path / "ds"
    prepare(folder, out, window=2.0, hop=1.0, holdout=0.0, **TINY)
    lines = (out / INDEX_NAME).read_text().splitlines()
    victim = json.loads(lines[-1])["source"]
    # a kill mid-append: the last source lost a line and the next one is cut in half
    (out / INDEX_NAME).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    report = prepare(folder, out, window=2.0, hop=1.0, holdout=0.0, **TINY)
    assert report.prepared == 1
    rows = read_jsonl(out / INDEX_NAME)
    assert len(rows) == len(lines) and sum(r["source"] == victim for r in rows) == json.loads(lines[-1])["windows"]
    assert len(PreparedDataset(out, "train")) == len(lines)


@pytest.mark.parametrize("option, value, message", [
    ("--window", "0", "--window must be a number > 0, got 0.0"),
    ("--hop", "-1", "--hop must be a number > 0, got -1.0"),
    ("--window", "inf", "--window must be a number > 0, got inf"),
    ("--holdout", "1", "--holdout must be a fraction of the videos in [0, 1), got 1.0"),
])
def test_a_window_hop_or_holdout_out_of_range_is_one_line_naming_the_option(folder, tmp_path, capsys, option, value,
                                                                          message):
    out = tmp_path / "data"
    assert main(["prepare", str(folder), str(out), "--backbone", "tiny", "--encoder", "tiny", option, value]) == 2
    assert capsys.readouterr().err == f"vidmusician prepare: error: {message}\n"
    assert not out.exists()


def test_a_rerun_with_another_holdout_is_refused(prepared, folder, tmp_path):
    """The sources done keep their split: another --holdout would split the rest otherwise (a mix)."""
    out, _ = prepared
    assert json.loads((out / "dataset.json").read_text())["holdout"] == 0.3
    index = (out / INDEX_NAME).read_text()
    with pytest.raises(DataError, match=r"prepared with other settings \(holdout: 0.3 vs 0.5\); leave those options "
                                        r"out \(a rerun takes the dataset's\), or prepare into a new folder"):
        prepare(folder, out, window=2.0, hop=1.0, holdout=0.5, **TINY)
    assert (out / INDEX_NAME).read_text() == index
    # A dataset prepared before the holdout was recorded: not compared.
    legacy = shutil.copytree(out, tmp_path / "legacy")
    meta = json.loads((legacy / "dataset.json").read_text())
    del meta["holdout"]
    (legacy / "dataset.json").write_text(json.dumps(meta))
    assert prepare(folder, legacy, window=2.0, hop=1.0, holdout=0.5, **TINY).already_done == 5


def test_pairs_from_a_csv_with_separate_audio_and_text(tmp_path):
    flash_video(tmp_path / "a.mp4", [0.5], 2.0)
    write_audio(tmp_path / "a.wav", noise_track(2.0, 7))
    flash_video(tmp_path / "b.mp4", [0.5], 2.0, audio=noise_track(2.0, 8))
    (tmp_path / "pairs.csv").write_text("video,audio,text\na.mp4,a.wav,calm piano\nb.mp4,,\n")
    sources = list_sources(tmp_path / "pairs.csv")
    assert [(s.id, s.audio, s.text) for s in sources] == [
        ("a.mp4+a.wav", tmp_path / "a.wav", "calm piano"), ("b.mp4", None, None)]
    prepare(tmp_path / "pairs.csv", tmp_path / "ds", window=2.0, hop=2.0, holdout=0.0, **TINY)
    data = PreparedDataset(tmp_path / "ds")
    assert data.has_text and sorted(str(data[i].text) for i in range(len(data))) == ["None", "calm piano"]


def test_a_source_list_naming_a_pair_twice_is_refused_before_any_work(tmp_path, capsys):
    # Two rows with one id would write that source's windows twice, and the reader would drop it as torn.
    (tmp_path / "pairs.csv").write_text("video,text\na.mp4,happy\nb.mp4,sad\na.mp4,another caption\n")
    assert main(["prepare", str(tmp_path / "pairs.csv"), str(tmp_path / "ds"), "--backbone", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "rows 2 and 4 both name a.mp4" in err and "once" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists()
    (tmp_path / "pairs.jsonl").write_text('{"video": "a.mp4", "audio": "x.wav"}\n{"video": "a.mp4"}\n'
                                          '{"video": "a.mp4", "audio": "x.wav"}\n')
    with pytest.raises(ConfigError, match=r"rows 1 and 3 both name a.mp4\+x.wav"):
        list_sources(tmp_path / "pairs.jsonl")
    # The same video with another music track is another pair.
    (tmp_path / "pairs.jsonl").write_text('{"video": "a.mp4", "audio": "x.wav"}\n{"video": "a.mp4"}\n')
    assert [s.id for s in list_sources(tmp_path / "pairs.jsonl")] == ["a.mp4+x.wav", "a.mp4"]
    # One file spelled two ways is one video.
    (tmp_path / "pairs.csv").write_text("video,audio\n./a.mp4,x.wav\nb.mp4,\nsub/../a.mp4,./x.wav\n")
    with pytest.raises(ConfigError, match=r"rows 2 and 4 both name ./a.mp4\+x.wav and sub/../a.mp4\+./x.wav"):
        list_sources(tmp_path / "pairs.csv")


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    # Spreadsheets save "CSV UTF-8" with a BOM before the header's first name.
    (tmp_path / "pairs.csv").write_bytes("\ufeffvideo,text\na.mp4,calm\nb.mp4,\n".encode("utf-8"))
    assert [(s.id, s.text) for s in list_sources(tmp_path / "pairs.csv")] == [("a.mp4", "calm"), ("b.mp4", None)]


def test_collate_pads_short_windows_and_aligns_video(prepared):
    out, _ = prepared
    data = PreparedDataset(out, "train")
    fr = DatasetMeta.load(out).frame_rate  # 2 s windows: 2 * fr codec frames, the video's 25 fps resampled to them
    batch = Collate(fr)([data[0], data[1]])
    assert batch.codes.shape == (2, 4, 2 * fr) and batch.valid.all()
    assert batch.videos.local.shape == (2, 2 * fr, 16) and batch.videos.present.all()
    for ex, local in zip(data, batch.videos.local):  # step s reads the video at time s / fr
        want = reference(ex.features.local_feats.double().numpy(), ex.features.local_fps, np.arange(2 * fr) / fr)
        np.testing.assert_allclose(local.numpy(), want, atol=1e-6)
    short = data[0]
    short.codes = short.codes[:, :30]
    batch = Collate(fr)([short, data[1]])
    assert batch.valid.sum(1).tolist() == [30, 2 * fr]
    mismatched = MismatchedVideos(data)
    assert torch.equal(mismatched[0].codes, data[0].codes)
    assert not torch.equal(mismatched[0].features.local_feats, data[0].features.local_feats)


def test_cli_prepare_and_its_errors(folder, tmp_path, capsys):
    assert main(["prepare", str(folder / "good2.mp4"), str(tmp_path / "x"), "--backbone", "tiny"]) == 2
    assert "expected a folder, a .csv or a .jsonl" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "no such folder or file" in capsys.readouterr().err
    with pytest.raises(DataError, match="not a prepared dataset"):
        PreparedDataset(tmp_path / "x")


def test_a_backbone_folder_given_relative_is_recorded_absolute(folder, tmp_path, monkeypatch):
    """'models/mygen' names a folder only from where it was given (and has the form of a Hub id): the
    dataset records its absolute path, which training takes from any working directory; a rerun given the
    same relative name, or a dataset that recorded it as given, is the same dataset."""
    from vidmusician.random_backbones import TINY_CODEC, codec_config, export_musicgen, lm_config

    work = tmp_path / "work"
    export_musicgen(tiny_musicgen(), lm_config(32, 4, 4, card=400), codec_config(**TINY_CODEC), work / "models" / "mygen")
    monkeypatch.chdir(work)
    options = dict(TINY, backbone="models/mygen", window=2.0, hop=1.0, holdout=0.0)
    prepare(folder, tmp_path / "ds", **options)
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["backbone"] == str(work / "models" / "mygen")
    assert prepare(folder, tmp_path / "ds", **options).prepared == 0  # the same dataset, nothing redone
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(dict(meta, backbone="models/mygen")))
    assert prepare(folder, tmp_path / "ds", **options).prepared == 0  # recorded as given: the same folder
    more = tmp_path / "more"  # ... also for a rerun that has sources left to prepare
    shutil.copytree(folder, more)
    flash_video(more / "late.mp4", [1.0], 3.0, audio=noise_track(3.0, 7))
    assert prepare(more, tmp_path / "ds", **options).prepared == 1
    with pytest.raises(DataError, match="backbone"):
        prepare(folder, tmp_path / "ds", **dict(options, backbone="tiny"))


def test_a_dataset_whose_backbone_folder_moved_takes_the_same_musicgen_from_its_new_place(tmp_path, capsys):
    """A dataset records its backbone folder's path on the machine that prepared it. Copied to a machine
    where that folder is not, a rerun takes the same MusicGen at another path when its codec is the one
    the dataset recorded, keeps the windows done and records the new path; another codec is refused, as
    is any folder for a dataset that recorded no codec; none given names the folder and the option."""
    from vidmusician.random_backbones import TINY_CODEC, codec_config, export_musicgen, lm_config

    def export(musicgen, folder):
        return export_musicgen(musicgen, lm_config(32, 4, 4, card=400), codec_config(**TINY_CODEC), folder)

    src, out = tmp_path / "videos", tmp_path / "ds"
    src.mkdir()
    flash_video(src / "a.mp4", [1.0], 3.0, audio=noise_track(3.0, 0))
    old = export(tiny_musicgen(), tmp_path / "there" / "mygen")
    options = dict(TINY, backbone=None, window=2.0, hop=1.0, holdout=0.0)
    prepare(src, out, **dict(options, backbone=str(old)))
    done = read_jsonl(out / INDEX_NAME)
    new = tmp_path / "here" / "mygen"
    new.parent.mkdir()
    old.rename(new)
    other = tiny_musicgen()
    with torch.no_grad():  # the same shapes of codes, another codec
        next(other.compression_model.parameters()).add_(0.5)
    export(other, tmp_path / "other")
    flash_video(src / "b.mp4", [1.0], 3.0, audio=noise_track(3.0, 1))
    assert main(["prepare", str(src), str(out), "--encoder", "tiny", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (f"{out}: prepared with the backbone folder {old}, which is not on this machine; "
                                     f"pass that MusicGen: --backbone NAME_OR_FOLDER") in err, err
    with pytest.raises(DataError, match=f"{tmp_path / 'other'} has another codec .* pass --backbone with the MusicGen"):
        prepare(src, out, **dict(options, backbone=str(tmp_path / "other")))
    # The recorded folder given again: the loader's line for a folder that is not there.
    with pytest.raises(BackboneError, match=f"^{old}: no such folder"):
        prepare(src, out, **dict(options, backbone=str(old)))
    # Another setting too: refused for it before any codec loads.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prepare_module, "load_codec", lambda *a, **k: pytest.fail("a codec loaded"))
        with pytest.raises(DataError, match="prepared with other settings .window: 2.0 vs 3.0"):
            prepare(src, out, **dict(options, backbone=str(tmp_path / "other"), window=3.0))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["backbone"] == str(old)
    (out / "dataset.json").write_text(json.dumps(dict(meta, codec_id=None)))
    with pytest.raises(DataError, match="before datasets recorded their codec"):
        prepare(src, out, **dict(options, backbone=str(new)))
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=f"backbone folder {old} is not on this machine; the dataset now records {new}"):
        report = prepare(src, out, **dict(options, backbone=str(new)))
    assert (report.already_done, report.prepared) == (1, 1)
    assert json.loads((out / "dataset.json").read_text())["backbone"] == str(new)  # training here finds it
    rows = read_jsonl(out / INDEX_NAME)
    assert rows[:len(done)] == done and {r["source"] for r in rows} == {"a.mp4", "b.mp4"}
    assert prepare(src, out, **options).already_done == 2  # a rerun without --backbone: the new path
