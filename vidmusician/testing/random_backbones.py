"""Random backbones for tests and benchmarks: tiny ones, and ones of the real architecture.

``tiny_musicgen`` and ``random_musicgen`` build models with audiocraft's own
classes and random weights, so tests and benchmarks run with no download;
``export_musicgen`` writes one in audiocraft's export format.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..adapter.audiocraft_internals import codebooks
from ..adapter.t5 import T5_BASE, TINY_T5, attach_random_t5
from ..errors import BackboneError
from ..runtime import seeded

# The real MusicGen LM architectures (audiocraft's musicgen configs): width, heads, layers.
ARCHITECTURES = {
    "small": dict(dim=1024, num_heads=16, num_layers=24),
    "medium": dict(dim=1536, num_heads=24, num_layers=48),
    "large": dict(dim=2048, num_heads=32, num_layers=48),
}


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
        # One k-means pass initializes the random codebooks (see build_codec); more
        # cost seconds per build and buy nothing for random weights.
        "rvq": {"n_q": n_q, "bins": bins, "kmeans_iters": 1},
    })


def build(lm_cfg, codec_cfg, name: str, seed: int, t5: tuple[str, dict] | None = None, max_duration: float = 30):
    """A MusicGen of random weights from an LM and a codec config (seeded: the same seed, the same model)."""
    from audiocraft.models import builders
    from audiocraft.models.musicgen import MusicGen

    with seeded(seed):
        lm = builders.get_lm_model(lm_cfg).eval()
    if t5 is not None:  # (T5 name, architecture): replaces the lookup-table text conditioner
        attach_random_t5(lm, *t5, seed=seed, device=lm_cfg.device)
    return MusicGen(name, build_codec(codec_cfg, seed), lm, max_duration=max_duration)


def build_codec(codec_cfg, seed: int):
    """The random codec of a tiny/random backbone; seeded on its own, so that
    :func:`load_codec` builds the same one without the LM."""
    from audiocraft.models import builders

    with seeded(seed), torch.no_grad():
        cm = builders.get_compression_model(codec_cfg).eval()
        # RVQ codebooks start un-initialized (k-means on the first batch): do it now,
        # seeded, on the encoder's own embeddings of a second of noise (so audio maps
        # to varied codes), jittered to twice as many vectors as codebook entries (so
        # that the residual codebooks see non-zero residuals).
        emb = cm.encoder(torch.randn(2, cm.channels, cm.sample_rate, device=codec_cfg.device))
        frames = emb.transpose(1, 2).reshape(-1, emb.shape[1])
        picks = frames[torch.randint(len(frames), (2 * cm.cardinality,), device=frames.device)]
        picks = picks + 0.1 * frames.std() * torch.randn_like(picks)
        books = codebooks(cm.quantizer)
        for book in books:
            book.init_embed_ = functools.partial(_init_codebook, book)  # this instance only
        try:
            cm.quantizer(picks.T[None], cm.frame_rate)
        finally:
            for book in books:
                del book.init_embed_  # back to audiocraft's method
    return cm


def _init_codebook(book, data: torch.Tensor) -> None:
    """audiocraft's ``EuclideanCodebook.init_embed_`` without its broadcast to the other processes.

    Under torch.distributed audiocraft broadcasts rank 0's k-means result, a collective
    every process must join: a process that builds the codec alone (the one process of a
    multi-process ``prepare`` with sources left) would wait for the others forever. Every
    process builds the same codebooks from the same seed, so there is nothing to share.
    """
    from audiocraft.quantization.core_vq import kmeans

    if book.inited:
        return
    embed, cluster_size = kmeans(data, book.codebook_size, book.kmeans_iters)
    book.embed.data.copy_(embed)
    book.embed_avg.data.copy_(embed.clone())
    book.cluster_size.data.copy_(cluster_size)
    book.inited.data.copy_(torch.Tensor([True]))


def has_random_weights(name: str) -> bool:
    """Whether ``load_backbone(name)`` builds a backbone with random weights ('tiny', 'tiny-t5',
    'random-small', ...): installation checks and benchmarks, whose music is noise."""
    return name in ("tiny", "tiny-t5") or name.startswith("random-")


# Codec frame rate and codebook size of the tiny and random backbones: 50 Hz as the real
# 32 kHz codec, so that tests run the resampling of the 25 fps video to the token rate.
TINY_CODEC = dict(frame_rate=50, bins=400)
RANDOM_CODEC = dict(frame_rate=50, bins=2048)
# The filters of MusicGen's 32 kHz EnCodec: load_codec('random-encodec') builds it with
# random weights, for benchmarks of the time a real codec takes.
ENCODEC_32KHZ_SEANET = dict(dimension=128, n_filters=64, n_residual_layers=1, lstm=2)


def tiny_musicgen(dim: int = 32, num_heads: int = 4, num_layers: int = 4, seed: int = 0, device="cpu",
                  t5: bool = False, frame_rate: int = TINY_CODEC["frame_rate"]):
    """A tiny random MusicGen for tests and offline checks (no download).

    A small EnCodec at 32 kHz / 50 Hz (the real codec's timing) with 4 codebooks of 400
    (audiocraft's debug codec sizes) and a tiny LM with MusicGen's layer structure.
    Random weights make noise.

    Args:
        t5: encode text with audiocraft's T5Conditioner around a one-block random T5
            (named 't5-small', 512 wide; see :mod:`vidmusician.adapter.t5`), as the released
            models do, instead of a lookup table: what the 't5-lora' semantic encoder
            needs. Loaded by the name 'tiny-t5'.
        frame_rate: the codec's frame rate, 50 or 25 (the tiny backbone of release 0.1,
            which adapter folders saved then were trained on); the LM is the same.
    """
    codec = dict(TINY_CODEC, frame_rate=frame_rate)
    return build(lm_config(dim, num_heads, num_layers, card=codec["bins"], device=str(device)),
                  codec_config(**codec, device=str(device)), "tiny-t5" if t5 else "tiny", seed,
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
    return build(lm_config(**architecture(size), card=RANDOM_CODEC["bins"], device=str(device)),
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


def architecture(size: str) -> dict:
    """The LM architecture of a real MusicGen size (BackboneError for an unknown size)."""
    if size not in ARCHITECTURES:
        raise BackboneError(f"unknown architecture {size!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[size]
