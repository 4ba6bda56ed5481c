"""Adapters by Hugging Face Hub id (``org/name[@revision]``), offline: a miniature cache serves adapter repos.

The repositories hold real adapter folders saved by the project on the tiny backbone,
in the cache's real layout (tests/hub.py ``put_repo``); ``huggingface_hub`` resolves
them as it would after a download.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import perturb_adapters, tiny_config
from hub import offline_env, put_repo
from media import flash_video

from vidmusician import cli
from vidmusician.adapter_files import read_adapter
from vidmusician.errors import AdapterError, ConfigError
from vidmusician.model import VidMusician, attach_adapters, load_adapter

REPO = "someone/vid-adapter"


def saved_adapter(folder, seed: int):
    from vidmusician.random_backbones import tiny_musicgen

    musicgen = tiny_musicgen(device="cpu")
    vm = attach_adapters(musicgen, tiny_config(musicgen))
    perturb_adapters(vm, seed=seed)
    return vm.save_pretrained(folder)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two adapter folders saved by the project: main's and tag v1's (different weights)."""
    root = tmp_path_factory.mktemp("adapters")
    main, v1 = saved_adapter(root / "main", seed=1), saved_adapter(root / "v1", seed=2)
    (main / "optimizer.bin").write_bytes(b"not for loading")  # a repo may hold more than the adapter
    return main, v1


@pytest.fixture
def adapter_hub(adapters, tmp_path):
    """A Hugging Face cache holding REPO (main and v1), made the process's cache with HF_HUB_OFFLINE=1."""
    main, v1 = adapters
    cache = tmp_path / "hf_home" / "hub"
    put_repo(cache, REPO, main)
    put_repo(cache, REPO, v1, revision="v1")
    with offline_env(cache):
        yield cache


def recorded_downloads(monkeypatch):
    import huggingface_hub

    calls, real = [], huggingface_hub.hf_hub_download

    def recording(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("revision")))
        return real(repo_id=repo_id, filename=filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording)
    return calls


def same_tensors(vm, folder) -> bool:
    _, state = read_adapter(folder)
    own = vm.adapter_state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in own)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_load_by_id_and_revision_fetches_only_the_adapter_files(adapter_hub, adapters, monkeypatch):
    main, v1 = adapters
    calls = recorded_downloads(monkeypatch)
    vm = load_adapter(REPO)
    assert same_tensors(vm, main) and not same_tensors(vm, v1)
    assert sorted(c[1] for c in calls) == ["adapter_config.json", "adapter_model.safetensors"]  # no optimizer.bin
    for loaded in (load_adapter(f"{REPO}@v1"), VidMusician.from_pretrained(REPO, revision="v1")):
        assert same_tensors(loaded, v1)
    assert same_tensors(VidMusician.from_pretrained(REPO), main)
    with pytest.raises(ConfigError) as exc:
        VidMusician.from_pretrained(f"{REPO}@v1", revision="main")
    assert "revision" in one_line(exc)


def test_generate_with_a_hub_id_equals_the_local_folder(adapter_hub, adapters, tmp_path):
    from vidmusician.pipeline import generate

    clip = flash_video(tmp_path / "clip.mp4", [0.2], 0.6)
    local, _ = generate(clip, adapter=str(adapters[0]), seed=3, progress=False)
    hub, _ = generate(clip, adapter=REPO, seed=3, progress=False)
    other, _ = generate(clip, adapter=f"{REPO}@v1", seed=3, progress=False)
    assert torch.equal(hub, local)  # one process computes both
    assert not torch.equal(other, local)


def test_a_local_folder_wins_over_the_hub_id(adapter_hub, adapters, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(adapters[1], tmp_path / REPO)
    monkeypatch.chdir(tmp_path)
    calls = recorded_downloads(monkeypatch)
    assert same_tensors(load_adapter(REPO), adapters[1])
    assert calls == []
    with pytest.raises(ConfigError) as exc:
        load_adapter(REPO, revision="v1")  # a revision of a folder means nothing
    assert "local path" in one_line(exc)


def test_offline_without_a_cached_copy_is_one_line(adapter_hub):
    for name in ("someone/absent", f"{REPO}@no-such-branch"):
        with pytest.raises(AdapterError) as exc:
            load_adapter(name)
        message = one_line(exc)
        assert message.startswith(f"{name}: no such folder") and "not in the Hugging Face cache" in message
        assert "HF_HUB_OFFLINE" in message


def test_an_unreachable_hub_falls_back_to_the_cache_at_once(adapter_hub, adapters, monkeypatch, caplog):
    """Not offline, but nothing answers: the cached copy loads, an uncached one is one line, no retries."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    caplog.set_level(logging.INFO, logger="huggingface_hub")
    assert same_tensors(load_adapter(REPO), adapters[0])
    with pytest.raises(AdapterError) as exc:
        load_adapter("someone/absent")
    assert "no such folder, and the Hugging Face Hub could not be reached" in one_line(exc)
    assert "Retrying" not in caplog.text


@pytest.mark.parametrize("error, message", [
    ("RepositoryNotFoundError", "nor an adapter on the Hugging Face Hub"),
    ("GatedRepoError", "a gated repository; accept its conditions on https://huggingface.co/someone/elsewhere"),
    ("RevisionNotFoundError", "no revision 'v9'"),
    ("RemoteEntryNotFoundError", "has no adapter_config.json; not a vidmusician adapter"),
])
def test_hub_answers_become_one_line(adapter_hub, monkeypatch, error, message):
    """What the Hub answers online (no repository, gated, no revision, no file), simulated: one line each."""
    import httpx2
    import huggingface_hub
    import huggingface_hub.constants as constants
    from huggingface_hub import errors

    def answer(url, **kwargs):
        response = httpx2.Response(404, request=httpx2.Request("HEAD", url))
        raise getattr(errors, error)(f"404 Client Error for {url}\nmore lines", response=response)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", answer)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: pytest.fail("downloaded after an error"))
    with pytest.raises(AdapterError) as exc:
        load_adapter("someone/elsewhere@v9")
    assert message in one_line(exc) and str(exc.value).startswith("someone/elsewhere@v9: ")


def test_the_command_line_takes_a_hub_id(adapter_hub, adapters, tmp_path, capsys):
    assert cli.main(["info", f"{REPO}@v1"]) == 0
    assert "adapter for tiny" in capsys.readouterr().out
    clip = flash_video(tmp_path / "clip.mp4", [0.2], 0.6)
    out = tmp_path / "music.wav"
    assert cli.main(["generate", str(clip), "--adapter", REPO, "-o", str(out), "--seed", "0", "-q"]) == 0
    from vidmusician.audio_io import read_tags

    assert read_tags(out)["adapter"] == REPO
    capsys.readouterr()
    for argv in (["info", "someone/absent"], ["generate", str(clip), "--adapter", "someone/absent", "-q"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "someone/absent: no such folder, and the Hub adapter is not in the Hugging Face cache" in err


def test_a_top_k_past_a_hub_adapters_backbone_is_refused_before_any_model_loads(adapter_hub, tmp_path, capsys,
                                                                                   monkeypatch):
    """The Hub adapter's config alone tells its backbone ('tiny': 400 tokens per codebook)."""
    import vidmusician.model

    monkeypatch.setattr(vidmusician.model, "load_backbone", lambda *a, **k: pytest.fail("a model loaded"))
    clip = flash_video(tmp_path / "clip.mp4", [0.2], 0.6)
    assert cli.main(["generate", str(clip), "--adapter", REPO, "--top-k", "401", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--top-k 401: more than the backbone's 400 tokens per codebook" in err, err
    # A top-k every known backbone takes, and no stride: nothing to refuse, so no request before the adapter's
    # load; and a bad argument is said before any request either.
    import vidmusician.hub

    from vidmusician.cli.commands.generate import backbone_name

    monkeypatch.setattr(vidmusician.hub, "resolve_adapter", lambda *a, **k: pytest.fail("the Hub was asked"))
    assert backbone_name(SimpleNamespace(backbone=None, adapter=REPO, top_k=400, extend_stride=None)) == ""
    argv = ["--top-k", "401", "--format", "mkv", "-o", str(tmp_path / "out.wav")]
    assert cli.main(["generate", str(clip), "--adapter", REPO, *argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format names the outputs made for you" in err, err


@pytest.mark.parametrize("name, repo_id", [
    ("facebook/musicgen-small", True), ("someone/vid.adapter_2", True), ("Org-1/x", True),
    ("musicgen-small", False), ("org/name/more", False), ("_org/name", False), ("org/.name", False),
    ("org/na me", False), ("a/../b", False), ("org/..", False), ("org/a..b", False), ("./folder", False),
    ("org/", False),
])
def test_adapters_and_backbones_agree_on_what_a_hub_id_is(name, repo_id, tmp_path, monkeypatch):
    """One form of 'org/name' for --adapter and --backbone: a name is a Hub id for both or for neither."""
    from vidmusician.hub_reach import is_local_name
    from vidmusician.hub import is_hub_id, split_revision

    monkeypatch.chdir(tmp_path)  # nothing here has the name: the form alone decides
    assert is_hub_id(name) is repo_id and is_local_name(name) is not repo_id
    assert is_hub_id(f"{name}@v1") is repo_id
    if repo_id:
        assert split_revision(f"{name}@refs/pr/1") == (name, "refs/pr/1")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert not is_hub_id("org/name") and is_local_name("org/name")  # a folder wins
