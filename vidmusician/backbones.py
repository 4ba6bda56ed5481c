"""Backbones: loading a MusicGen by name (pretrained, tiny, random or learned), and its spec.

``load_backbone`` goes through audiocraft's own ``MusicGen.get_pretrained`` (hub
names and local folders in audiocraft's export format), after reading the LM's
config to refuse what the adapters do not support. The random ones ('tiny',
'random-small', ...) are built by :mod:`vidmusician.testing.random_backbones`, 'tiny-learned'
by :mod:`vidmusician.testing.learned_base`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pickle
import zipfile

import torch

from .backbone_spec import BackboneSpec, backbone_spec, check_fuser  # noqa: F401  (their old home)
from .errors import BackboneError, did_you_mean, one_line
from .hub_reach import BUILT_BACKBONES, hub_unreachable, is_local_name, offline_mode, offline_set
from .runtime import default_device
from .testing import random_backbones
from .testing.learned_base import learned_musicgen, music_codec
from .testing.random_backbones import ARCHITECTURES, ENCODEC_32KHZ_SEANET, RANDOM_CODEC, TINY_CODEC, codec_config

HUB_NAMES = {f"facebook/musicgen-{size}": size for size in ARCHITECTURES}


# A local MusicGen folder in audiocraft's export format.
MUSICGEN_FILES = ("state_dict.bin", "compression_state_dict.bin")


def load_backbone(name_or_path: str = "facebook/musicgen-small", device=None):
    """Loads a MusicGen through audiocraft's ``MusicGen.get_pretrained``.

    The LM's config is read first (without its weights), so that a backbone the
    adapters do not support is refused before anything else is downloaded or built.

    Args:
        name_or_path: a hub name ('facebook/musicgen-small', 'facebook/musicgen-stereo-small',
            or any repository in audiocraft's export format; downloaded on first use),
            a local folder in that format (``state_dict.bin`` + ``compression_state_dict.bin``;
            the model's ``name`` is then its absolute path),
            'tiny' / 'tiny-t5' (:func:`~vidmusician.testing.random_backbones.tiny_musicgen`), 'tiny-learned'
            (its LM trained on synthetic music: :func:`vidmusician.testing.learned_base.learned_musicgen`), or
            'random-small' / 'random-medium' / 'random-large'
            (:func:`~vidmusician.testing.random_backbones.random_musicgen`).
        device: 'cuda' or 'cpu'; default: CUDA when available.
    """
    from audiocraft.models.musicgen import MusicGen

    name, device = str(name_or_path), str(default_device(device))
    if name in ("tiny", "tiny-t5"):
        return random_backbones.tiny_musicgen(device=device, t5=name == "tiny-t5")
    if name == "tiny-learned":
        return learned_musicgen(device=device)
    if name.startswith("random-"):
        return random_backbones.random_musicgen(name.removeprefix("random-"), device=device)
    # A Hub that does not answer: audiocraft's downloads (weights, codec, T5) come from the cache at
    # once, not after the ~25 s of retries each that huggingface_hub spends on an unreachable Hub.
    with offline_mode(not is_local_name(name) and hub_unreachable(name, "state_dict.bin")):
        read_lm_config(name)
        with _load_errors(name, "MusicGen backbone"):
            musicgen = MusicGen.get_pretrained(name, device=device)
    musicgen.name = recorded_name(name)
    return musicgen


def check_name(name) -> None:
    """What :func:`load_backbone` would refuse about a name without reading a file or asking the Hub: an
    unknown 'random-SIZE', a local folder that is not there or lacks a MusicGen's files (BackboneError).
    Run before work starts in several processes, so the line comes once, not from each of them."""
    name, built = str(name), built_codec(str(name))
    if built == "random":  # 'random-encodec', a codec alone, is prepare's
        random_backbones.architecture(name.removeprefix("random-"))
    elif built is None and is_local_name(name):  # as load_backbone reads a name
        _check_local_folder(name, MUSICGEN_FILES)


def missing_folder(name) -> bool:
    """Whether a backbone name means a local folder (:func:`recorded_name`) that is not on this machine."""
    name = str(name)
    return built_codec(name) is None and is_local_name(name) and not os.path.exists(name)


def recorded_name(name) -> str:
    """A backbone's name as adapters and datasets record it: a local folder by its absolute path,
    which names the folder from any working directory and never reads as a Hub id ('models/mygen'
    as 'org/name'); a name the backbone is built from ('tiny', 'random-small') or a Hub id as it is."""
    name = str(name)
    return os.path.abspath(name) if built_codec(name) is None and is_local_name(name) else name


def other_backbone(recorded: str, running: str | None) -> bool:
    """Whether an adapter recorded for backbone ``recorded`` runs on another one, named ``running``.

    Names are compared as recorded (:func:`recorded_name`: a folder by its
    absolute path), two folders by where their links lead. A recorded folder not on this machine
    (another machine's, or the ``./NAME`` a pushed adapter records) is not another backbone: passing
    one is how such an adapter runs. Nor is a folder of the recorded Hub name's last part: a local
    copy of that model, or the relative folder an adapter of an older vidmusician recorded
    ('models/mygen', which reads as a Hub id).
    """
    if running is None or missing_folder(recorded):
        return False
    recorded, running = recorded_name(recorded), recorded_name(running)
    if os.path.isabs(running):
        if os.path.isabs(recorded):
            return os.path.realpath(recorded) != os.path.realpath(running)
        if not is_local_name(recorded) and os.path.basename(recorded) == os.path.basename(running):
            return False
    return recorded != running


def built_codec(name: str) -> str | None:
    """The codec :func:`load_codec` builds for a backbone name, by name ('tiny' and 'tiny-t5' share
    'tiny', every 'random-SIZE' 'random'); None for a codec it loads (a hub name or a folder)."""
    if name in ("tiny", "tiny-t5"):
        return "tiny"
    if name in ("tiny-learned", "random-encodec"):
        return name
    return "random" if name.startswith("random-") else None


def load_codec(name_or_path: str = "facebook/musicgen-small", device=None):
    """Loads only a backbone's codec, for encoding music without the LM.

    Takes the same names as :func:`load_backbone`. The codec is wrapped as
    ``MusicGen`` wraps it (stereo models interleave two channels' codebooks: 8
    codebooks, 2 channels), following the LM's config, which is read without
    materializing the LM's weights: a local folder needs ``state_dict.bin`` beside
    ``compression_state_dict.bin`` for that config (a codec alone could not tell a stereo
    model's wrapping). The codec of 'tiny', 'tiny-t5' and 'random-*' is the one
    :func:`tiny_musicgen` / :func:`random_musicgen` build; that of 'tiny-learned' is
    :func:`vidmusician.testing.learned_base.music_codec`, whose decoded audio follows its codes;
    'random-encodec' (a codec alone, no backbone) has the filters of the real 32 kHz EnCodec, random weights.
    """
    from audiocraft.models import builders, loaders

    name, device = str(name_or_path), str(default_device(device))
    built = built_codec(name)
    if built == "tiny-learned":
        return music_codec(device)
    if built == "tiny":
        return random_backbones.build_codec(codec_config(**TINY_CODEC, device=device), seed=0)
    if built == "random-encodec":
        return random_backbones.build_codec(codec_config(**RANDOM_CODEC, device=device, seanet=ENCODEC_32KHZ_SEANET),
                                            seed=0)
    if built == "random":
        random_backbones.architecture(name.removeprefix("random-"))  # the codec is the same for every size
        return random_backbones.build_codec(codec_config(**RANDOM_CODEC, device=device), seed=0)
    with offline_mode(not is_local_name(name) and hub_unreachable(name, "state_dict.bin")):
        cfg = read_lm_config(name)
        with _load_errors(name, "codec"):
            codec = loaders.load_compression_model(name, device=device)
    return builders.get_wrapped_compression_model(codec, cfg).eval()


def read_lm_config(name: str):
    """The LM config (``xp.cfg``) of a MusicGen export, read without its weights; refuses unsupported models.

    A hub repository's ``config.json`` (the transformers port, when there is one)
    is checked first, so that a melody model is refused before its weights are
    downloaded; then ``state_dict.bin`` is memory-mapped and only its config is read.

    Raises:
        BackboneError: a missing folder, a name not on the hub (or not in the cache
            when offline), a file that is not an audiocraft export, or a backbone
            that fuses conditions by 'prepend' (see :func:`check_fuser`).
    """
    from omegaconf import OmegaConf

    if is_local_name(name):
        _check_local_folder(name, MUSICGEN_FILES)
        state_dict = os.path.join(name, "state_dict.bin")
    else:
        hf_config = _hub_file(name, "config.json", required=False)
        if hf_config is not None and _json_field(hf_config, "model_type") == "musicgen_melody":
            check_fuser(name, {"prepend": ["self_wav"]})
        state_dict = _hub_file(name, "state_dict.bin")
    with _load_errors(name, "MusicGen config"):
        # Memory-mapped, the LM's tensors stay on disk; only files in torch's zip format can be.
        pkg = torch.load(state_dict, map_location="cpu", mmap=zipfile.is_zipfile(state_dict), weights_only=True)
    if not isinstance(pkg, dict) or "xp.cfg" not in pkg:
        raise BackboneError(f"{name}: state_dict.bin has no 'xp.cfg'; not a MusicGen in audiocraft's export format")
    cfg = OmegaConf.create(pkg["xp.cfg"])
    check_fuser(name, cfg.get("fuser") or {})
    return cfg


def _check_local_folder(name: str, files: tuple[str, ...]) -> None:
    if not os.path.isdir(name):
        raise BackboneError(f"{name}: no such folder{_built_hint(name)}; pass a hub name like facebook/musicgen-small "
                            f"or a folder in audiocraft's layout ({', '.join(files)})")
    missing = [f for f in files if not os.path.isfile(os.path.join(name, f))]
    if missing:
        raise BackboneError(f"{name}: not a MusicGen folder (missing {', '.join(missing)}); "
                            f"pass a hub name like facebook/musicgen-small or a folder in audiocraft's layout")


def _built_hint(name: str) -> str:
    """`` (did you mean tiny?)`` for a bare name close to one built by name: 'tiy' meant 'tiny' more likely
    than a folder; a path (``models/tiy``) names a folder."""
    if os.sep in name or "/" in name:
        return ""
    return did_you_mean(name, (*BUILT_BACKBONES, "random-encodec"))


def _hub_file(repo: str, filename: str, required: bool = True) -> str | None:
    """A file of a hub repository, downloaded into the cache audiocraft reads (None: absent, not required)."""
    import audiocraft
    from audiocraft.models.loaders import get_audiocraft_cache_dir
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        # The same call as audiocraft's loader, so that its own load finds the file in the cache.
        return hf_hub_download(repo_id=repo, filename=filename, cache_dir=get_audiocraft_cache_dir(),
                               library_name="audiocraft", library_version=audiocraft.__version__)
    except RepositoryNotFoundError:
        raise BackboneError(f"{repo}: no such folder, nor a model on the Hugging Face Hub (a private one needs "
                            f"`hf auth login`); pass a hub name like facebook/musicgen-small or a local folder") from None
    except LocalEntryNotFoundError:
        if not required:
            return None
        why = "HF_HUB_OFFLINE is set" if offline_set() else "the Hub could not be reached"
        raise BackboneError(f"{repo}: no such folder, and the hub model's {filename} is not in the Hugging Face "
                            f"cache ({why}); download it once with a network connection, or pass a local folder") from None
    except EntryNotFoundError:
        if not required:
            return None
        raise BackboneError(f"{repo}: the repository has no {filename}; not a MusicGen in audiocraft's "
                            f"export format (state_dict.bin + compression_state_dict.bin)") from None


def _json_field(path: str, key: str):
    try:
        with open(path) as f:
            return json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None  # not the transformers port's config: the LM config decides


@contextlib.contextmanager
def _load_errors(name: str, what: str):
    """audiocraft's checkpoint globals for the load, and its errors as one line."""
    try:
        with audiocraft_checkpoint_globals():
            yield
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise BackboneError(f"{name}: could not load the {what} ({one_line(exc)}); check the name, "
                            f"the network for a first download, or pass a local folder") from None


@contextlib.contextmanager
def audiocraft_checkpoint_globals():
    """Lets ``torch.load`` (weights_only, the default since torch 2.6) read audiocraft checkpoints.

    audiocraft's loaders call ``torch.load`` without ``weights_only``; their files
    hold the experiment config as an OmegaConf object. Rather than turning off
    weights_only, allow exactly the OmegaConf classes such a config pickles to.
    Scoped to the load, so nothing else in the process is affected.
    """
    import typing

    from omegaconf import DictConfig, ListConfig, base, nodes

    allowed = [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, nodes.AnyNode,
               nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode,
               typing.Any, dict, list, int, float, bool, str, collections.defaultdict]
    with torch.serialization.safe_globals(allowed):
        yield
