"""What a newcomer's mistakes get: the command's name, the source of a mistyped key, the name meant.

Each case is a slip seen in a walk-through: ``--set max_steps 10`` (a space for the ``=``),
a mistyped recipe or adapter key, ``--backbone tiy``, ``--encoder tny``; and the plain path
mistakes said before the model stack imports (seconds): a missing recipe, dataset or
adapter folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vidmusician import cli
from vidmusician.errors import BackboneError, ConfigError
from vidmusician.training.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "stage1_semantic.json"


def refused(capsys, *args) -> str:
    """The one line ``vidmusician ARGS`` says on stderr, refused with exit status 2."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's refusals exit, as the console script does
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    return err.rstrip("\n")


# ---- the command line ----------------------------------------------------------------------------


def test_a_stray_word_is_said_by_the_subcommand_with_how_to_write_set(tmp_path, capsys):
    train = ["train", "--recipe", RECIPE, "--data", tmp_path, "--output", tmp_path / "run"]
    assert refused(capsys, *train, "--set", "lr=0.001", "--set", "max_steps", "10") == (
        "vidmusician train: error: unrecognized arguments: 10; --set takes KEY=VALUE: --set max_steps=10 "
        "(see vidmusician train -h)")
    # Another stray word: the subcommand's name, no word about --set.
    assert refused(capsys, "info", "musicgen-small", "extra") == (
        "vidmusician info: error: unrecognized arguments: extra (see vidmusician info -h)")


def test_the_trainers_own_command_line_says_the_same(tmp_path, capsys):
    from vidmusician.training.train import main

    with pytest.raises(SystemExit) as exited:
        main(["--recipe", str(RECIPE), "--data", str(tmp_path), "--output", str(tmp_path / "run"),
              "--set", "max_steps", "10"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "python -m vidmusician.training.train: error: unrecognized arguments: 10; --set takes KEY=VALUE: "
        "--set max_steps=10 (see python -m vidmusician.training.train -h)\n")


@pytest.mark.parametrize("command", ["generate", "train", "prepare"])
def test_the_backbone_help_names_the_practice_runs_backbone(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps the help at hyphens too
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert "'tiny-learned' (the practice run's" in capsys.readouterr().out


# ---- a mistyped key: where it came from, and the key meant ----------------------------------------


@pytest.mark.parametrize("override, line", [
    ("max_step=10", "--set max_step: unknown recipe key (did you mean max_steps?)"),
    ("adapter.attn_dims=64", "--set adapter.attn_dims: unknown adapter config key (did you mean attn_dim?)"),
    ("zzz=1", "--set zzz: unknown recipe key; known: adapter, batch_size, betas, codebook_weights, "
              "eval_every, eval_windows, grad_accum, grad_clip, gradient_checkpointing, init_adapter, "
              "keep_checkpoints, log_every, lr, max_steps, min_lr, num_workers, plausible_targets, save_every, "
              "seed, stage, text_dropout, trainable, warmup_steps, weight_decay"),
])
def test_a_mistyped_set_key_names_the_set_and_the_key_meant(override, line):
    with pytest.raises(ConfigError) as refused_:
        Recipe.load(RECIPE, ["lr=0.001", override])
    assert str(refused_.value) == line


@pytest.mark.parametrize("body, line", [
    ({"max_step": 10, "lrr": 0.1}, "unknown recipe keys lrr (did you mean lr?), max_step (did you mean max_steps?)"),
    ({"adapter": {"attn_dims": 64}}, "unknown adapter config key attn_dims (did you mean attn_dim?)"),
    ({"adapter": {"rythm_rank": 4, "qq": 1}}, "unknown adapter config keys qq, rythm_rank (did you mean rhythm_rank?); "
                                              "known: attn_dim, attn_heads, lora_alpha,"),
])
def test_a_mistyped_key_in_the_recipe_file_names_the_file_and_the_key_meant(body, line, tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError) as refused_:
        Recipe.load(path, ["max_steps=10"])  # a --set beside it: the key is still the file's
    assert str(refused_.value).startswith(f"{path}: {line}"), refused_.value


# ---- a mistyped backbone or encoder name -----------------------------------------------------------


@pytest.mark.parametrize("name, meant", [("tiy", "tiny"), ("tiny_learned", "tiny-learned"), ("tinyt5", "tiny-t5"),
                                         ("randomencodec", "random-encodec"), ("random_small", "random-small"),
                                         ("zzz", None), ("./tiy", None)])
def test_a_backbone_name_close_to_one_built_by_name_says_it(name, meant, tmp_path, monkeypatch):
    from vidmusician.backbones import check_name

    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackboneError) as refused_:
        check_name(name)
    hint = f" (did you mean {meant}?)" if meant else ""
    assert str(refused_.value).startswith(f"{name}: no such folder{hint}; pass a hub name like "), refused_.value
    (tmp_path / "tiy").mkdir()  # a folder of that name is one: what it lacks is said, no other name
    with pytest.raises(BackboneError, match=r"^tiy: not a MusicGen folder \(missing state_dict.bin"):
        check_name("tiy")


def test_generate_with_a_mistyped_backbone_says_the_name_meant(tmp_path, capsys, monkeypatch):
    from media import flash_video

    clip = flash_video(tmp_path / "clip.mp4", [0.5], 1.0, size=32)
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, "generate", clip, "--backbone", "tiy", "--encoder", "tiny", "-o", tmp_path / "out.wav")
    assert err.startswith("vidmusician generate: error: tiy: no such folder (did you mean tiny?); "), err


@pytest.mark.parametrize("spec, meant", [("tny", "tiny"), ("ViT-B-23", "ViT-B-32"), ("Nope-Q", None)])
def test_an_encoder_name_close_to_a_known_one_says_it(spec, meant):
    from vidmusician.video.encoder_specs import resolve_encoder

    with pytest.raises(ConfigError) as refused_:
        resolve_encoder(spec)
    message = str(refused_.value)
    assert message.startswith(f"visual encoder {spec!r}: unknown open_clip model"), message
    assert message.endswith(f"or a folder that does not exist{f' (did you mean {meant}?)' if meant else ''}")


# ---- plain path mistakes, before the model stack imports -------------------------------------------


@pytest.mark.parametrize("args, line", [
    (["train", "--recipe", "missing.json", "--data", "DATA", "--output", "run"],
     "missing.json: no such recipe; pass a recipe file (JSON), or the name of a shipped one: stage1_semantic, "
     "stage2_rhythm"),
    (["train", "--recipe", RECIPE, "--data", "nodata", "--output", "run"],
     "nodata: not a prepared dataset (no dataset.json); run `vidmusician prepare SRC nodata`"),
    (["train", "--recipe", RECIPE, "--data", "DATA", "--output", "run", "--set", "max_step=1"],
     "--set max_step: unknown recipe key (did you mean max_steps?)"),
    (["train", "--recipe", RECIPE, "--data", "nodata", "--output", "run", "--num-processes", "2"],
     "nodata: not a prepared dataset (no dataset.json); run `vidmusician prepare SRC nodata`"),
    (["generate", "clip.mp4", "--adapter", "missing_folder"],
     "missing_folder: adapter folder not found (expected adapter_config.json and adapter_model.safetensors)"),
    (["generate", "clip.mp4", "clip.mp4", "-o", "out/", "--adapter", "missing_folder"],
     "missing_folder: adapter folder not found (expected adapter_config.json and adapter_model.safetensors)"),
], ids=["recipe", "data", "set key", "data, 2 processes", "adapter", "adapter, many videos"])
def test_a_path_mistake_is_said_before_torch_loads(args, line, tmp_path):
    """In a fresh process, as a user's shell runs it: the line, and neither torch nor audiocraft imported
    (their import is most of the seconds a command takes to start)."""
    (tmp_path / "DATA").mkdir()
    (tmp_path / "DATA" / "dataset.json").write_text("{}")
    (tmp_path / "clip.mp4").write_bytes(b"\0")
    command = args[0]
    code = (f"import sys; from vidmusician.cli import main; code = main({[str(a) for a in args]!r}); "
            f"print(code, sorted({{'torch', 'audiocraft'}} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stderr == f"vidmusician {command}: error: {line}\n", done.stderr
    assert done.stdout == "2 []\n", done.stdout


def test_a_hub_id_shaped_adapter_is_left_to_the_hub(tmp_path, monkeypatch):
    """Only a local-looking name that is not there is refused early: 'org/name' may be a Hub adapter."""
    from vidmusician.cli.commands.generate import check_local_adapter
    from vidmusician.errors import AdapterError

    monkeypatch.chdir(tmp_path)
    check_local_adapter("someone/absent")
    check_local_adapter("someone/absent@v1")
    check_local_adapter(None)
    with pytest.raises(AdapterError, match="^absent: adapter folder not found"):
        check_local_adapter("absent")
    with pytest.raises(AdapterError, match="^../absent: adapter folder not found"):
        check_local_adapter("../absent")  # no Hub id has '..'
