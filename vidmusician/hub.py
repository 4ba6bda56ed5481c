"""Adapters on the Hugging Face Hub, by peft's convention: a repository holds
``adapter_config.json`` + ``adapter_model.safetensors`` (and a model card), never the backbone.

An adapter is named by a folder or by a Hub id, ``org/name`` or ``org/name@revision``
(a branch, tag or commit). A folder that exists always wins. Hub files go through
``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``HF_TOKEN``); only the adapter's
own files are fetched. What the Hub or the cache answers becomes one
:class:`~vidmusician.errors.AdapterError` line with the fix. The model card is made by
:mod:`vidmusician.model_card`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from pathlib import Path

from . import __version__
from .adapter_files import WEIGHTS_NAME, check_adapter_tensors, read_adapter, renamed_backbone
from .config import CONFIG_NAME, adapter_folder
from .errors import AdapterError, ConfigError, one_line
from .hub_reach import REPO_ID, is_repo_id, no_answer

__all__ = ["ADAPTER_FILES", "is_hub_id", "split_revision", "resolve_adapter", "push_adapter"]

ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME)
# A Hugging Face repository id ('org/name'), optionally '@revision' (which may hold '/': 'refs/pr/1').
_HUB_ID = re.compile(rf"(?P<repo>{REPO_ID.pattern})(?:@(?P<revision>\S+))?")


def is_hub_id(name) -> bool:
    """Whether ``name`` means a Hub adapter: ``org/name[@revision]`` and no such folder or file here."""
    if not isinstance(name, str) or os.path.exists(name):
        return False
    match = _HUB_ID.fullmatch(name)
    return match is not None and is_repo_id(match["repo"])


def split_revision(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """``'org/name@v1'`` -> ``('org/name', 'v1')``; a ``revision`` argument must agree with the id's."""
    match = _HUB_ID.fullmatch(name)
    if match is None:
        raise ConfigError(f"{name}: not a Hub id; use org/name or org/name@revision")
    own = match["revision"]
    if own and revision and own != revision:
        raise ConfigError(f"{name}: the id names revision {own!r} and revision={revision!r} was also given; "
                          f"pass one of them")
    return match["repo"], own or revision


def resolve_adapter(name, revision: str | None = None, files: tuple[str, ...] = ADAPTER_FILES) -> Path:
    """The local folder of an adapter: ``name`` itself, or its Hub files in the cache.

    Args:
        name: an adapter folder, or a Hub id (``org/name``, ``org/name@revision``).
            A folder (or file) that exists is used as is, whatever its name looks like.
        revision: branch, tag or commit of a Hub id (or ``@revision`` in the id).
        files: which of the adapter's files to fetch (``info`` needs only the config).

    Returns:
        A folder holding ``files``: the given one, or a snapshot in the Hugging Face cache.

    Raises:
        AdapterError: not on the Hub, gated, no such revision, or not cached while offline.
    """
    if not is_hub_id(name):
        if revision is not None:
            raise ConfigError(f"{name}: revision={revision!r} is for a Hub id (org/name); this is a local path")
        return Path(name)
    repo, revision = split_revision(name, revision)
    first = _download(repo, files[0], revision)
    # The rest from the same commit as the first: a push in between cannot mix two versions.
    commit = first.parent.name
    for filename in files[1:]:
        _download(repo, filename, commit, shown_revision=revision)
    return first.parent


def _download(repo: str, filename: str, revision: str | None, shown_revision: str | None = None) -> Path:
    from huggingface_hub import constants, hf_hub_download

    kwargs = dict(repo_id=repo, filename=filename, revision=revision, library_name="vidmusician",
                  library_version=__version__)
    where = f"{repo}@{shown_revision or revision}" if (shown_revision or revision) else repo
    with hub_errors(where, shown_revision or revision, filename):
        # An answer from the Hub that is an error (no such repository, gated, ...) is raised: hub_errors
        # says it; no answer: the cache decides at once (see hub_unreachable).
        if not constants.HF_HUB_OFFLINE and no_answer(repo, filename, revision):
            return Path(hf_hub_download(**kwargs, local_files_only=True))
        return Path(hf_hub_download(**kwargs))


@contextlib.contextmanager
def hub_errors(where: str, revision: str | None = None, filename: str | None = None, push: bool = False):
    """Turns what ``huggingface_hub`` raises inside into one AdapterError line naming ``where`` and the fix."""
    try:
        yield
    except AdapterError:
        raise
    except Exception as exc:
        message = _hub_message(exc, where, revision, filename, push)
        if message is None:
            raise
        raise AdapterError(f"{where}: {message}") from None


def _hub_message(exc: Exception, where: str, revision, filename, push: bool) -> str | None:
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        LocalTokenNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    login = "`hf auth login` (or HF_TOKEN)"
    if isinstance(exc, GatedRepoError):  # before RepositoryNotFoundError, its base class
        return (f"a gated repository; accept its conditions on https://huggingface.co/{where.split('@')[0]} "
                f"and log in with {login}")
    if isinstance(exc, RepositoryNotFoundError):
        if push:
            return f"cannot write to this repository; log in with {login} using a token with write access"
        return (f"no such folder, nor an adapter on the Hugging Face Hub (a private one needs {login}); "
                f"pass an adapter folder or a Hub id like org/name")
    if isinstance(exc, RevisionNotFoundError):
        return f"no revision {revision!r}; pass a branch, tag or commit of the repository"
    if isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE):
        if push:
            return "HF_HUB_OFFLINE is set; unset it to push"
        return ("no such folder, and the Hub adapter is not in the Hugging Face cache (HF_HUB_OFFLINE is set); "
                "fetch it once without HF_HUB_OFFLINE, or pass an adapter folder")
    if isinstance(exc, LocalEntryNotFoundError):
        return ("no such folder, and the Hugging Face Hub could not be reached with the adapter not in its cache; "
                "check the connection (or HF_ENDPOINT), or pass an adapter folder")
    if isinstance(exc, EntryNotFoundError):  # the repository exists, the file does not
        return f"the repository has no {filename}; not a vidmusician adapter ({' + '.join(ADAPTER_FILES)})"
    if isinstance(exc, LocalTokenNotFoundError):
        return f"pushing needs a Hugging Face token; log in with {login}"
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return f"the Hub refused ({status}); log in with {login} using a token with write access"
        return f"the Hugging Face Hub answered: {one_line(exc)}"
    if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.startswith(("httpx", "requests")):
        return f"the Hugging Face Hub could not be reached ({one_line(exc)}); check the connection"
    return None


def push_adapter(folder, repo_id: str, private: bool | None = None, revision: str | None = None,
                 report=None, commit_message: str | None = None, token: str | None = None,
                 license: str = "cc-by-nc-4.0", run=None, backbone_parameters: int | None = None) -> str:
    """Uploads an adapter folder to the Hub with a model card, in one commit.

    Only ``adapter_config.json``, ``adapter_model.safetensors`` and the card
    (``README.md``) are sent: other files in the folder (checkpoints, pickles, a
    backbone) stay here. An adapter trained on a backbone folder of this machine is
    sent with that folder's last part for its backbone, as ``./NAME`` (the path names nothing elsewhere);
    its users pass the backbone with ``--backbone``.

    Args:
        folder: the adapter folder (read and checked before anything is sent).
        repo_id: ``org/name`` (created if missing).
        private: create the repository private (an existing one keeps its visibility).
        revision: branch to commit to (created from main if missing); default: main.
        report: an eval report (the JSON of ``vidmusician eval --output``) for the card's metrics.
        commit_message: default: "Upload vidmusician adapter".
        token: a Hugging Face token; default: the logged-in one (``HF_TOKEN``).
        license: the card's license id; MusicGen's weights, which the adapter runs on,
            are CC-BY-NC 4.0.
        run: the training run folder whose record goes into the card; default: the
            folder above ``folder`` when it holds one (``RUN/adapter``).
        backbone_parameters: the frozen backbone's parameter count, when known.

    Returns:
        The URL of the commit.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from .model_card import adapter_card, base_model_id, shown_backbone

    folder = adapter_folder(folder)  # the folder, also when given one of its files
    config, tensors = read_adapter(folder)  # refuses a folder that is not a readable adapter, before any upload
    check_adapter_tensors(config, tensors, folder)  # ... or weights that no backbone would load
    repo, own = split_revision(repo_id, revision)
    api = HfApi(token=token, library_name="vidmusician", library_version=__version__)
    base_model = base_model_id(config.backbone)
    with hub_errors(repo, own, push=True):
        if base_model is not None and not api.repo_exists(base_model, repo_type="model"):
            # The Hub refuses a card whose base_model names no model it has: an adapter saved by an older
            # vidmusician recorded a relative backbone folder ('models/mygen') in that form.
            warnings.warn(f"{config.backbone}: no model of that name on the Hugging Face Hub (or not one this "
                          f"token can read); the card names it in its text only, not as base_model")
            base_model = None
    card = adapter_card(folder, config, repo, report=report, run=run, license=license,
                        backbone_parameters=backbone_parameters, base_model=base_model, revision=own)
    files = {name: str(folder / name) for name in ADAPTER_FILES}
    shown, local = shown_backbone(config.backbone)
    if local:  # a backbone folder of this machine: named by its last part, as the card names it, as a
        # folder ('./tiny' is no backbone built by name; 'mygen' alone would read as one being a file name)
        files = renamed_backbone(folder, f"./{shown}")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=files[name]) for name in ADAPTER_FILES]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    with hub_errors(repo, own, push=True):
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        if own:
            api.create_branch(repo, branch=own, exist_ok=True, repo_type="model")
        info = api.create_commit(repo, operations, commit_message=commit_message or "Upload vidmusician adapter",
                                 revision=own, repo_type="model")
    return str(getattr(info, "commit_url", info))


def save_and_push(vm, repo_id: str, **kwargs) -> str:
    """:meth:`VidMusician.push_to_hub`: saves the adapters to a temporary folder and pushes it."""
    kwargs.setdefault("backbone_parameters", vm.parameter_counts()["backbone"])
    with tempfile.TemporaryDirectory(prefix="vidmusician-push-") as tmp:
        folder = vm.save_pretrained(Path(tmp) / "adapter")
        return push_adapter(folder, repo_id, **kwargs)
