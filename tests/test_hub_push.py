"""Pushing adapters to the Hub: the commit is recorded (HfApi's calls replaced), never sent.

A real two-stage training run on the tiny backbone gives the adapter folder and its
run record; a real ``vidmusician eval --output`` gives the report; the card is read back
with huggingface_hub's own ModelCard parser.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load
from hub import MUSICGEN, hub_cache, offline_env, offline_hub  # noqa: F401 (fixtures)
from media import flash_video

from vidmusician import cli
from vidmusician.adapter.wiring import count_adapter_parameters
from vidmusician.config import AdapterConfig
from vidmusician.errors import AdapterError, ConfigError
from vidmusician.hub import push_adapter

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY_ADAPTER = {"memory_dim": 32, "attn_dim": 16, "attn_heads": 2}
SECONDS, FRAMES = 4.0, 200  # the tiny codec runs at 50 Hz, as MusicGen


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stage 1 then stage 2 with the shipped recipes on a 5-video dataset: the two run folders."""
    from vidmusician.training.dataset import DatasetMeta, ShardWriter
    from vidmusician.training.train import main
    from vidmusician.video.features import extract_features, load_encoder

    root = tmp_path_factory.mktemp("push")
    data = root / "data"
    data.mkdir()
    # Prepared with --window 2 x SECONDS: the clips (SECONDS long) give windows of their own length.
    DatasetMeta("tiny", 32000, 1, 50.0, 4, 400, "tiny", 32, 16, 1.0, 25.0, 2 * SECONDS, SECONDS).save(data)
    encoder, g = load_encoder("tiny", device="cpu"), torch.Generator().manual_seed(0)
    writer = ShardWriter(data)
    for i in range(5):
        video = flash_video(data / f"v{i}.mp4", [0.5 + 0.5 * i], SECONDS)
        writer.add({"source": f"v{i}", "split": "train" if i < 4 else "holdout", "text": None},
                   [(0.0, torch.randint(0, 400, (4, FRAMES), generator=g), extract_features(video, encoder))])
    writer.flush()
    small = ["--set", "batch_size=2", "--set", "num_workers=0", "--set", "eval_every=2", "--set", "save_every=3",
             "--set", "warmup_steps=1", "--set", "lr=0.01", "--set", "log_every=1"]
    dims = [x for k, v in TINY_ADAPTER.items() for x in ("--set", f"adapter.{k}={v}")]
    stage1, stage2 = root / "stage1", root / "stage2"
    assert main(["--recipe", str(REPO_ROOT / "recipes" / "stage1_semantic.json"), "--data", str(data),
                 "--output", str(stage1), "--backbone", "tiny", "--set", "max_steps=3", *small, *dims]) == 0
    here = os.getcwd()
    os.chdir(root)  # --init as typed in the runs' folder: the card follows it from wherever push runs
    try:
        assert main(["--recipe", str(REPO_ROOT / "recipes" / "stage2_rhythm.json"), "--data", str(data),
                     "--output", str(stage2), "--init", "stage1/adapter", "--set", "max_steps=2", *small]) == 0
    finally:
        os.chdir(here)
    return stage1, stage2


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A real eval report (`vidmusician eval --output`) of one clip."""
    from media import write_audio

    root = tmp_path_factory.mktemp("report")
    (root / "videos").mkdir()
    (root / "generated").mkdir()
    flash_video(root / "videos" / "clip.mp4", [0.5, 1.5], 2.0)
    clicks = torch.zeros(64000)
    for t in (0.5, 1.0, 1.5):
        clicks[int(t * 32000):int(t * 32000) + 200] = 0.8
    write_audio(root / "generated" / "clip.wav", clicks.numpy())
    out = root / "report.json"
    assert cli.main(["eval", "--videos", str(root / "videos"), "--generated", str(root / "generated"),
                     "--encoder", "tiny", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def commits(monkeypatch):
    """Replaces HfApi's network calls with a recorder: ``[(method, args, kwargs), ...]``."""
    from huggingface_hub import HfApi

    calls = []

    def read(source):
        return source if isinstance(source, bytes) else open(source, "rb").read()

    def recorder(name):
        def call(self, *args, **kwargs):
            if name == "create_commit":  # what would be uploaded, read now (a temporary folder goes away)
                kwargs["sent"] = {op.path_in_repo: read(op.path_or_fileobj) for op in args[1]}
            calls.append((name, args, kwargs))
            return type("CommitInfo", (), {"commit_url": "https://huggingface.co/org/name/commit/abc"})()
        return call

    for name in ("create_repo", "create_branch", "create_commit"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    # The models on this recorded Hub: MusicGen's.
    monkeypatch.setattr(HfApi, "repo_exists", lambda self, repo_id, **kwargs: repo_id.startswith("facebook/musicgen"))
    return calls


def sent(calls) -> dict[str, bytes]:
    """The files of the one recorded commit, by path in the repository."""
    (commit,) = [c for c in calls if c[0] == "create_commit"]
    return commit[2]["sent"]


def card_of(files):
    from huggingface_hub import ModelCard

    return ModelCard(files["README.md"].decode())


def test_push_sends_the_adapter_files_and_a_card_only(trained, report, commits, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(trained[1] / "adapter", folder)
    (folder / "optimizer.bin").write_bytes(b"pickle")  # never sent
    (folder / "musicgen.pt").write_bytes(b"backbone")
    url = push_adapter(folder, "org/name", private=True, report=report, run=trained[1])
    assert url.endswith("/commit/abc")
    files = sent(commits)
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert files[name] == (folder / name).read_bytes()
    names = [c[0] for c in commits]
    assert names == ["create_repo", "create_commit"]  # no branch: main
    assert commits[0][2]["private"] is True and commits[0][2]["exist_ok"] is True


def test_push_takes_a_path_to_either_file_of_the_folder_for_the_folder(trained, commits):
    folder = trained[1] / "adapter"
    push_adapter(folder / "adapter_model.safetensors", "org/name")
    files = sent(commits)
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert all(files[name] == (folder / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors"))


def test_the_card_says_what_made_the_adapter(trained, report, commits):
    stage1, stage2 = trained
    push_adapter(stage2 / "adapter", "org/name", report=report)  # the run: the folder above the adapter
    card = card_of(sent(commits))
    meta = card.data.to_dict()
    assert meta["library_name"] == "vidmusician" and meta["license"] == "cc-by-nc-4.0"
    assert {"video-to-music", "musicgen", "audiocraft"} <= set(meta["tags"])
    assert "base_model" not in meta  # 'tiny' is no Hub id
    text = card.text
    for section in ("## Model", "## Training", "## Evaluation", "## Usage", "## License"):
        assert section in text
    config = AdapterConfig.load(stage2 / "adapter")
    counts = count_adapter_parameters(config)
    assert f"{counts['total']:,} in the adapters (semantic {counts['semantic']:,}, rhythm {counts['rhythm']:,})" in text
    assert "`tiny` (frozen, not in this repository)" in text and "visual encoder | `tiny`" in text
    assert "semantic encoder | t5-lora" in text or "semantic encoder | linear" in text
    # Both stages, in order, with the steps each ran, its recipe file and the data's size.
    one = text.index("**stage 1** (`")
    two = text.index("**stage 2** (`")
    assert one < two
    assert "(`stage1_semantic.json`)" in text[one:two] and str(REPO_ROOT) not in text  # no local paths
    assert "stage1_semantic.json" in text[one:two] and "3 steps" in text[one:two]
    assert "stage2_rhythm.json" in text[two:] and "2 steps" in text[two:]
    assert "4 training windows of 4.0 s (+ 1 held out)" in text and "8.0 s" not in text  # the clips', not --window's
    mean = json.loads(report.read_text())["mean"]["beat_alignment"]
    assert f"| beat_alignment (σ = 0.12 s) | {mean:.4f} |" in text and "on 1 clip (" in text
    assert "vidmusician generate clip.mp4 --adapter org/name" in text
    assert 'VidMusician.from_pretrained("org/name")' in text
    assert "CC-BY-NC 4.0" in text


def test_branch_and_the_cli(trained, report, commits, capsys):
    code = cli.main(["push", str(trained[1] / "adapter"), "org/name", "--private", "--branch", "dev",
                     "--report", str(report)])
    assert code == 0 and "pushed" in capsys.readouterr().err
    names = [c[0] for c in commits]
    assert names == ["create_repo", "create_branch", "create_commit"]
    assert commits[1][2]["branch"] == "dev" and commits[2][2]["revision"] == "dev"
    text = card_of(sent(commits)).text
    assert "## Evaluation" in text and "--adapter org/name@dev -o" in text  # the usage loads the branch


def test_push_refuses_what_is_not_an_adapter_in_one_line(trained, commits, tmp_path, capsys):
    (tmp_path / "config-only").mkdir()
    shutil.copyfile(trained[0] / "adapter" / "adapter_config.json", tmp_path / "config-only" / "adapter_config.json")
    (tmp_path / "run.json").write_text("{}")
    cases = [str(tmp_path / "nowhere"), str(tmp_path), str(tmp_path / "config-only"), str(tmp_path / "run.json")]
    for folder in cases:
        assert cli.main(["push", folder, "org/name"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vidmusician push: error: ") and folder in err
    assert cli.main(["push", str(trained[0] / "adapter"), "org/name", "--report", str(tmp_path / "run.json")]) == 2
    assert "not an eval report" in capsys.readouterr().err
    assert commits == []  # nothing was sent


def test_push_refuses_weights_no_backbone_would_load(trained, commits, tmp_path, capsys):
    """What loading refuses is not sent: a diverged adapter's NaN, weights that do not match the config."""
    from safetensors.torch import load_file, save_file

    for damage in ("nan", "missing tensor"):
        folder = tmp_path / damage.replace(" ", "-")
        shutil.copytree(trained[1] / "adapter", folder)
        tensors = load_file(folder / "adapter_model.safetensors")
        name = sorted(tensors)[0]
        if damage == "nan":
            tensors[name] = torch.full_like(tensors[name], float("nan"))
        else:
            del tensors[name]
        save_file(tensors, folder / "adapter_model.safetensors")
        assert cli.main(["push", str(folder), "org/name"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(folder) in err, err
        assert ("holds NaN or infinite values" if damage == "nan" else "the file does not match its config") in err
    assert commits == []


def test_a_run_record_that_is_not_an_object_is_one_line_and_the_card_names_no_local_folder(trained, commits,
                                                                                          tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(dict(info, init_adapter="/home/someone/secret/runs/stage1/adapter")))
    push_adapter(run / "adapter", "org/name")
    text = card_of(sent(commits)).text
    assert "started from `stage1/adapter`" in text and "/home/someone" not in text
    (run / "recipe.json").write_text("[1, 2]")
    assert cli.main(["push", str(run / "adapter"), "org/name"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recipe.json: not a JSON object" in err, err


@pytest.mark.parametrize("backbone", ["/home/someone/ckpts/musicgen-ft", "./musicgen-ft"])
def test_a_local_backbone_is_named_by_its_folder_and_the_usage_passes_a_copy(trained, backbone):
    """An adapter trained on a local export: the card names no local folder, and its usage gives the
    backbone (a copy of it), since the config's path means nothing to anyone else."""
    from vidmusician.model_card import adapter_card

    folder = trained[0] / "adapter"
    config = dataclasses.replace(AdapterConfig.load(folder), backbone=backbone)
    text = adapter_card(folder, config, "org/name").text
    assert "`musicgen-ft` (a local checkpoint in audiocraft's format, frozen" in text
    assert "MusicGen `musicgen-ft` into a video-to-music model" in text
    assert "/home/someone" not in text and "./musicgen-ft" not in text
    assert "--adapter org/name --backbone path/to/musicgen-ft -o clip_scored.mp4" in text
    assert 'VidMusician.from_pretrained("org/name", backbone="path/to/musicgen-ft")' in text
    assert "# the backbone loads from its config" not in text
    hub = adapter_card(folder, dataclasses.replace(config, backbone="facebook/musicgen-small"), "org/name").text
    assert "`facebook/musicgen-small` (frozen" in hub and "--backbone" not in hub


def test_a_run_started_from_a_file_of_an_adapter_folder_leads_the_card_to_that_run(trained, tmp_path):
    """--init takes either file of an adapter folder for the folder: so does the card."""
    from vidmusician.model_card import adapter_card

    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(dict(info, init_adapter=str(trained[0] / "adapter" / "adapter_config.json"))))
    text = adapter_card(run / "adapter", AdapterConfig.load(run / "adapter"), "org/name").text
    assert text.index("**stage 1** (`") < text.index("**stage 2** (`")


def test_push_while_offline_is_one_line(trained, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AdapterError) as exc:
        push_adapter(trained[0] / "adapter", "org/name")
    assert str(exc.value) == "org/name: HF_HUB_OFFLINE is set; unset it to push"


def test_vm_push_to_hub_names_the_base_model(offline_hub, commits):
    from conftest import tiny_config

    from vidmusician.backbones import load_backbone
    from vidmusician.model import attach_adapters

    musicgen = load_backbone(MUSICGEN, device="cpu")
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    vm.push_to_hub("org/name", revision="v2")
    files = sent(commits)
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = card_of(files)
    assert card.data.base_model == MUSICGEN
    backbone = vm.parameter_counts()["backbone"]
    assert f"the backbone's {backbone:,} stay frozen" in card.text
    assert "No training record" in card.text
    with pytest.raises(ConfigError):
        vm.push_to_hub("org/name", run=offline_hub)  # not a run folder


def test_a_backbone_folder_given_relative_is_recorded_absolute_and_is_no_base_model(tiny, tmp_path, monkeypatch,
                                                                                       commits, capsys):
    """'models/mygen' has the form of a Hub id: the adapter records the folder's absolute path, so a
    push from another working directory names no base_model, and the adapter still loads from there."""
    from conftest import tiny_config

    from vidmusician.backbones import load_backbone
    from vidmusician.model import attach_adapters, load_adapter
    from vidmusician.random_backbones import TINY_CODEC, codec_config, export_musicgen, lm_config

    work = tmp_path / "work"
    export_musicgen(tiny(), lm_config(32, 4, 4, card=400), codec_config(**TINY_CODEC), work / "models" / "mygen")
    monkeypatch.chdir(work)
    musicgen = load_backbone("models/mygen", device="cpu")
    folder = attach_adapters(musicgen, tiny_config(musicgen)).save_pretrained(tmp_path / "adapter")
    monkeypatch.chdir(tmp_path)  # elsewhere: 'models/mygen' names no folder here
    push_adapter(folder, "org/name")
    card = card_of(sent(commits))
    assert card.data.base_model is None
    assert "`mygen` (a local checkpoint in audiocraft's format, frozen" in card.text and str(work) not in card.text
    assert AdapterConfig.load(folder).backbone == str(work / "models" / "mygen")
    # What goes up names the folder by its last part, in the config and in the weights' metadata.
    files = sent(commits)
    assert all(str(work).encode() not in files[name] for name in files)
    assert json.loads(files["adapter_config.json"])["backbone"] == "./mygen"
    (tmp_path / "sent.safetensors").write_bytes(files["adapter_model.safetensors"])
    with safe_open(str(tmp_path / "sent.safetensors"), framework="pt") as f:
        assert f.metadata()["backbone"] == "./mygen"
    local = load((folder / "adapter_model.safetensors").read_bytes())
    up = load(files["adapter_model.safetensors"])
    assert up.keys() == local.keys() and all(torch.equal(v, up[k]) for k, v in local.items())
    assert load_adapter(folder, device="cpu").config.backbone == str(work / "models" / "mygen")
    assert cli.main(["info", str(folder)]) == 0
    assert f"adapter for {work / 'models' / 'mygen'} (dim 32" in capsys.readouterr().out


def test_a_backbone_that_names_no_model_on_the_hub_is_no_base_model(trained, commits, tmp_path):
    """The Hub refuses a card whose base_model is not a model there: an adapter saved by an older
    vidmusician records a relative backbone folder ('models/mygen') in a Hub id's form, which
    names nothing from another working directory."""
    folder = tmp_path / "adapter"
    shutil.copytree(trained[0] / "adapter", folder)
    config = AdapterConfig.load(folder)
    config.replace(backbone=MUSICGEN).save(folder / "adapter_config.json")
    push_adapter(folder, "org/name")
    assert card_of(sent(commits)).data.base_model == MUSICGEN
    commits.clear()
    config.replace(backbone="models/mygen").save(folder / "adapter_config.json")
    with pytest.warns(UserWarning, match=r"models/mygen: no model of that name on the Hugging Face Hub \(or not "
                                          r"one this token can read\); the card names it"):
        push_adapter(folder, "org/name")
    card = card_of(sent(commits))
    assert card.data.base_model is None and "models/mygen" in card.text


def test_an_adapter_whose_backbone_folder_is_not_here_says_to_pass_one(tiny, tmp_path, capsys):
    """A Hub adapter trained on someone's local MusicGen folder records that folder: loading it without a
    backbone says which folder it was and the option that gives one, before anything loads."""
    from conftest import tiny_config

    from vidmusician.model import attach_adapters, load_adapter

    folder = attach_adapters(tiny(), tiny_config(tiny())).save_pretrained(tmp_path / "adapter")
    config = AdapterConfig.load(folder)
    config.replace(backbone="/home/someone/models/mygen").save(folder / "adapter_config.json")
    with pytest.raises(AdapterError, match="trained on the backbone folder /home/someone/models/mygen, which is not "
                                           "on this machine; pass that MusicGen: --backbone"):
        load_adapter(folder, device="cpu")
    assert load_adapter(folder, backbone="tiny", device="cpu").config.backbone == "/home/someone/models/mygen"
    clip = tmp_path / "clip.mp4"
    flash_video(clip, [0.5], 1.0)
    assert cli.main(["generate", str(clip), "--adapter", str(folder), "--encoder", "tiny", "-o",
                     str(tmp_path / "out.wav"), "--duration", "0.2", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backbone NAME_OR_FOLDER" in err, err
