"""Backbones: pretrained MusicGen loading, and random ones for tests and benchmarks.

``load_backbone`` goes through audiocraft's own ``MusicGen.get_pretrained`` (hub
names and local folders in audiocraft's export format), after reading the LM's
config to refuse what the adapters do not support. ``tiny_musicgen`` and
``random_musicgen`` build models with audiocraft's own classes and random
weights, so tests and benchmarks run with no download.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import BackboneError

# The real MusicGen LM architectures (audiocraft's musicgen configs): width, heads, layers.
ARCHITECTURES = {
    "small": dict(dim=1024, num_heads=16, num_layers=24),
    "medium": dict(dim=1536, num_heads=24, num_layers=48),
    "large": dict(dim=2048, num_heads=32, num_layers=48),
}
HUB_NAMES = {f"facebook/musicgen-{size}": size for size in ARCHITECTURES}


@dataclass(frozen=True)
class BackboneSpec:
    """What an adapter depends on in a backbone."""

    name: str
    dim: int
    num_layers: int
    num_heads: int
    n_q: int
    card: int
    frame_rate: float
    sample_rate: int
    channels: int


def backbone_spec(musicgen) -> BackboneSpec:
    """Reads the adapter-relevant facts off a loaded MusicGen."""
    lm = musicgen.lm
    cm = musicgen.compression_model
    return BackboneSpec(
        name=str(musicgen.name),
        dim=int(lm.dim),
        num_layers=len(lm.transformer.layers),
        num_heads=int(getattr(lm.transformer.layers[0], "base_layer", lm.transformer.layers[0]).self_attn.num_heads),
        n_q=int(lm.num_codebooks),
        card=int(lm.card),
        frame_rate=float(cm.frame_rate),
        sample_rate=int(cm.sample_rate),
        channels=int(cm.channels),
    )


def lm_config(dim: int, num_heads: int, num_layers: int, n_q: int = 4, card: int = 2048,
              text_dim: int = 16, device: str = "cpu"):
    """An audiocraft LM config (the layout of its exported checkpoints) with MusicGen's layer options.

    The real models condition on text through T5 (a download); here a lookup-table
    conditioner with the 'noop' tokenizer keeps the same cross-attention structure
    without touching the network or spaCy.
    """
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "lm_model": "transformer_lm", "device": device, "dtype": "float32",
        "dataset": {"segment_duration": 30.0},
        "transformer_lm": dict(
            n_q=n_q, card=card, dim=dim, num_heads=num_heads, num_layers=num_layers, hidden_scale=4,
            norm="layer_norm", norm_first=True, bias_proj=False, bias_ff=False, bias_attn=False,
            causal=True, custom=False, memory_efficient=True, positional_embedding="sin",
            weight_init="gaussian", depthwise_init="current", zero_bias_init=True),
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": list(range(n_q))}},
        "attribute_dropout": {},
        "classifier_free_guidance": {"training_dropout": 0.1, "inference_coef": 3.0},
        "fuser": {"cross": ["description"], "prepend": [], "sum": [], "input_interpolate": []},
        "conditioners": {"description": {"model": "lut", "lut": {"n_bins": 128, "dim": text_dim, "tokenizer": "noop"}}},
    })


def codec_config(frame_rate: int, bins: int, n_q: int = 4, sample_rate: int = 32000, device: str = "cpu",
                 seanet: dict | None = None):
    """A small EnCodec config in audiocraft's layout: the real codec's interface, few filters (``seanet``: others)."""
    from omegaconf import OmegaConf

    ratios = {25: [10, 8, 16], 50: [8, 5, 4, 4]}[frame_rate]  # hop = sample_rate / frame_rate at 32 kHz
    return OmegaConf.create({
        "compression_model": "encodec", "device": device,
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": sample_rate, "channels": 1},
        "seanet": {"dimension": 32, "n_filters": 4, "n_residual_layers": 1, "ratios": ratios,
                   "encoder": {}, "decoder": {}, **(seanet or {})},
        # One k-means pass initializes the random codebooks (see _build_codec); more
        # cost seconds per build and buy nothing for random weights.
        "rvq": {"n_q": n_q, "bins": bins, "kmeans_iters": 1},
    })


def _build(lm_cfg, codec_cfg, name: str, seed: int, t5: tuple[str, dict] | None = None, max_duration: float = 30):
    from audiocraft.models import builders
    from audiocraft.models.musicgen import MusicGen

    from .t5 import attach_random_t5

    with _seeded(seed):
        lm = builders.get_lm_model(lm_cfg).eval()
    if t5 is not None:  # (T5 name, architecture): replaces the lookup-table text conditioner
        attach_random_t5(lm, *t5, seed=seed, device=lm_cfg.device)
    return MusicGen(name, _build_codec(codec_cfg, seed), lm, max_duration=max_duration)


def _build_codec(codec_cfg, seed: int):
    """The random codec of a tiny/random backbone; seeded on its own, so that
    :func:`load_codec` builds the same one without the LM."""
    from audiocraft.models import builders

    with _seeded(seed), torch.no_grad():
        cm = builders.get_compression_model(codec_cfg).eval()
        # RVQ codebooks start un-initialized (k-means on the first batch): do it now,
        # seeded, on the encoder's own embeddings of a second of noise (so audio maps
        # to varied codes), jittered to twice as many vectors as codebook entries (so
        # that the residual codebooks see non-zero residuals).
        emb = cm.encoder(torch.randn(2, cm.channels, cm.sample_rate, device=codec_cfg.device))
        frames = emb.transpose(1, 2).reshape(-1, emb.shape[1])
        picks = frames[torch.randint(len(frames), (2 * cm.cardinality,), device=frames.device)]
        picks = picks + 0.1 * frames.std() * torch.randn_like(picks)
        cm.quantizer(picks.T[None], cm.frame_rate)
    return cm


# Codec frame rate and codebook size of the tiny and random backbones.
TINY_CODEC = dict(frame_rate=25, bins=400)
RANDOM_CODEC = dict(frame_rate=50, bins=2048)
# The filters of MusicGen's 32 kHz EnCodec: load_codec('random-encodec') builds it with
# random weights, for benchmarks of the time a real codec takes.
ENCODEC_32KHZ_SEANET = dict(dimension=128, n_filters=64, n_residual_layers=1, lstm=2)


def tiny_musicgen(dim: int = 32, num_heads: int = 4, num_layers: int = 4, seed: int = 0, device="cpu",
                  t5: bool = False):
    """A tiny random MusicGen for tests and offline checks (no download).

    A small EnCodec at 32 kHz / 25 Hz with 4 codebooks of 400 (audiocraft's debug
    codec sizes) and a tiny LM with MusicGen's layer structure. Random weights make noise.

    Args:
        t5: encode text with audiocraft's T5Conditioner around a one-block random T5
            (named 't5-small', 512 wide; see :mod:`vidmusician.t5`), as the released
            models do, instead of a lookup table: what the 't5-lora' semantic encoder
            needs. Loaded by the name 'tiny-t5'.
    """
    from .t5 import TINY_T5

    return _build(lm_config(dim, num_heads, num_layers, card=TINY_CODEC["bins"], device=str(device)),
                  codec_config(**TINY_CODEC, device=str(device)), "tiny-t5" if t5 else "tiny", seed,
                  t5=("t5-small", TINY_T5) if t5 else None)


def random_musicgen(size: str = "small", seed: int = 0, device="cpu"):
    """A MusicGen with the real LM architecture and random weights, for benchmarks.

    Args:
        size: 'small' (1024 wide, 16 heads, 24 layers), 'medium' (1536/24/48) or
            'large' (2048/32/48); 4 codebooks of 2048 at 50 Hz like the real models,
            and text through a random ``t5-base``-shaped T5 (tiny vocabulary).
        seed: RNG seed of the random weights.
        device: where to build the model.
    """
    from .t5 import T5_BASE

    return _build(lm_config(**_architecture(size), card=RANDOM_CODEC["bins"], device=str(device)),
                  codec_config(**RANDOM_CODEC, device=str(device)), f"random-{size}", seed, t5=("t5-base", T5_BASE))


def export_musicgen(musicgen, lm_cfg, codec_cfg, directory) -> Path:
    """Writes a MusicGen in audiocraft's exported layout (``state_dict.bin`` and
    ``compression_state_dict.bin``, each ``{'xp.cfg', 'best_state', ...}``), the
    layout ``MusicGen.get_pretrained`` reads from a local folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"xp.cfg": lm_cfg, "best_state": musicgen.lm.state_dict(), "version": "1.3.0", "exported": True},
               directory / "state_dict.bin")
    torch.save({"xp.cfg": codec_cfg, "best_state": musicgen.compression_model.state_dict(),
                "version": "1.3.0", "exported": True}, directory / "compression_state_dict.bin")
    return directory


def load_backbone(name_or_path: str = "facebook/musicgen-small", device=None):
    """Loads a MusicGen through audiocraft's ``MusicGen.get_pretrained``.

    The LM's config is read first (without its weights), so that a backbone the
    adapters do not support is refused before anything else is downloaded or built.

    Args:
        name_or_path: a hub name ('facebook/musicgen-small', 'facebook/musicgen-stereo-small',
            or any repository in audiocraft's export format; downloaded on first use),
            a local folder in that format (``state_dict.bin`` + ``compression_state_dict.bin``),
            'tiny' / 'tiny-t5' (:func:`tiny_musicgen`), 'tiny-learned' (its LM trained on synthetic
            music: :func:`vidmusician.learned_base.learned_musicgen`), or 'random-small' / 'random-medium' /
            'random-large' (:func:`random_musicgen`).
        device: 'cuda' or 'cpu'; default: CUDA when available.
    """
    from audiocraft.models.musicgen import MusicGen

    name, device = str(name_or_path), _default_device(device)
    if name in ("tiny", "tiny-t5"):
        return tiny_musicgen(device=device, t5=name == "tiny-t5")
    if name == "tiny-learned":
        from .learned_base import learned_musicgen

        return learned_musicgen(device=device)
    if name.startswith("random-"):
        return random_musicgen(name.removeprefix("random-"), device=device)
    read_lm_config(name)
    with _load_errors(name, "MusicGen backbone"):
        musicgen = MusicGen.get_pretrained(name, device=device)
    musicgen.name = name
    return musicgen


def load_codec(name_or_path: str = "facebook/musicgen-small", device=None):
    """Loads only a backbone's codec, for encoding music without the LM.

    Takes the same names as :func:`load_backbone`. The codec is wrapped as
    ``MusicGen`` wraps it (stereo models interleave two channels' codebooks: 8
    codebooks, 2 channels), following the LM's config, which is read without
    materializing the LM's weights: a local folder needs ``state_dict.bin`` beside
    ``compression_state_dict.bin`` for that config (a codec alone could not tell a stereo
    model's wrapping). The codec of 'tiny', 'tiny-t5' and 'random-*' is the one
    :func:`tiny_musicgen` / :func:`random_musicgen` build ('tiny-learned' has the codec of 'tiny');
    'random-encodec' (a codec alone, no backbone) has the filters of the real 32 kHz EnCodec, random weights.
    """
    from audiocraft.models import builders, loaders

    name, device = str(name_or_path), _default_device(device)
    if name in ("tiny", "tiny-t5", "tiny-learned"):
        return _build_codec(codec_config(**TINY_CODEC, device=device), seed=0)
    if name == "random-encodec":
        return _build_codec(codec_config(**RANDOM_CODEC, device=device, seanet=ENCODEC_32KHZ_SEANET), seed=0)
    if name.startswith("random-"):
        _architecture(name.removeprefix("random-"))  # the codec is the same for every size
        return _build_codec(codec_config(**RANDOM_CODEC, device=device), seed=0)
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

    if _is_local(name):
        _check_local_folder(name, ("state_dict.bin", "compression_state_dict.bin"))
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


def check_fuser(name: str, fuse2cond) -> None:
    """Refuses a backbone that fuses conditions by 'prepend' (musicgen-melody's chroma).

    Prepended conditions shift every token position, which the adapters' timeline
    (step s <-> video time s / frame_rate) does not account for yet.

    Args:
        name: the backbone's name, for the message.
        fuse2cond: the fuser's method -> condition names (audiocraft's ``ConditionFuser.fuse2cond``
            or the ``fuser`` section of the LM config).
    """
    prepended = list(fuse2cond.get("prepend") or [])
    if prepended:
        raise BackboneError(
            f"{name}: prepends its {', '.join(map(str, prepended))} condition (melody models), which shifts "
            f"token positions and is not supported yet; use a musicgen small/medium/large or stereo model")


def _architecture(size: str) -> dict:
    if size not in ARCHITECTURES:
        raise BackboneError(f"unknown architecture {size!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[size]


def _default_device(device) -> str:
    return str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")


# A Hugging Face repository id: 'org/name'.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def _is_local(name: str) -> bool:
    """Whether ``name`` means a folder: it exists, or it cannot be a hub repository id ('org/name')."""
    return os.path.exists(name) or not _REPO_ID.fullmatch(name) or ".." in name


def _check_local_folder(name: str, files: tuple[str, ...]) -> None:
    if not os.path.isdir(name):
        raise BackboneError(f"{name}: no such folder; pass a hub name like facebook/musicgen-small "
                            f"or a folder in audiocraft's layout ({', '.join(files)})")
    missing = [f for f in files if not os.path.isfile(os.path.join(name, f))]
    if missing:
        raise BackboneError(f"{name}: not a MusicGen folder (missing {', '.join(missing)}); "
                            f"pass a hub name like facebook/musicgen-small or a folder in audiocraft's layout")


def _hub_file(repo: str, filename: str, required: bool = True) -> str | None:
    """A file of a hub repository, downloaded into the cache audiocraft reads (None: absent, not required)."""
    import audiocraft
    from audiocraft.models.loaders import get_audiocraft_cache_dir
    from huggingface_hub import constants, hf_hub_download
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
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(f"{name}: could not load the {what} ({first}); check the name, "
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


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
