"""The backbone's T5 text encoder: finding it, describing it, and building a random one in memory.

MusicGen encodes text prompts with audiocraft's ``T5Conditioner`` (``t5-base``
for every released model). The paper's semantic path reuses that frozen T5 for
the video (see :mod:`vidmusician.adapter.semantic`). The tiny and random backbones get
a T5 too, built from a ``T5Config`` with random weights and a tokenizer made in
memory, inside audiocraft's own conditioner class, so that the code path of the
released models runs offline.
"""

from __future__ import annotations

import torch

from ..config import T5_ARCH_KEYS as ARCH_KEYS
from ..config import check_t5_architecture as check_architecture  # noqa: F401  (its old home)
from ..runtime import seeded
from .audiocraft_internals import in_memory_t5_conditioner_class
# The released MusicGen models' T5 (``t5-base``'s encoder); the random backbones use it too.
T5_BASE = dict(d_model=768, d_kv=64, num_heads=12, num_layers=12, d_ff=3072)
# A T5 named 't5-small' (audiocraft's table fixes its width at 512) cut to one narrow block.
TINY_T5 = dict(d_model=512, d_kv=8, num_heads=2, num_layers=1, d_ff=16, relative_attention_num_buckets=8,
               relative_attention_max_distance=16)
# The words the in-memory tokenizer knows (any other word is <unk>): enough for prompts in tests.
WORDS = ("lo fi piano drums bass calm upbeat jazz rock guitar synth ambient song music with a and the "
         "slow fast happy sad loud soft").split()


def text_conditioner(musicgen):
    """The backbone's audiocraft ``T5Conditioner`` (its text encoder), or None when it has none."""
    from audiocraft.modules.conditioners import T5Conditioner

    provider = getattr(musicgen.lm, "condition_provider", None)
    for conditioner in getattr(provider, "conditioners", {}).values():
        if isinstance(conditioner, T5Conditioner):
            return conditioner
    return None


def architecture(t5) -> dict[str, int]:
    """The shapes of a ``T5EncoderModel`` the adapters depend on ({d_model, d_kv, num_heads, num_layers})."""
    return {key: int(getattr(t5.config, key)) for key in ARCH_KEYS}


def encoder_from_architecture(arch: dict, vocab_size: int = 2, **extra):
    """A ``T5EncoderModel`` of the given shapes (random weights; on the current default device)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, **{k: arch[k] for k in ARCH_KEYS}, **extra)
    return T5EncoderModel(config).eval()


def offline_tokenizer():
    """A T5 tokenizer made in memory: a Unigram vocabulary of :data:`WORDS` with T5's special ids.

    ``<pad>`` = 0, ``</s>`` = 1 (appended to every text), ``<unk>`` = 2, as in T5's
    own vocabulary, so audiocraft's conditioner pads and masks as it does with the real one.
    """
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -float(i + 3)) for i, word in enumerate(WORDS)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def attach_random_t5(lm, name: str, arch: dict, seed: int = 0, device="cpu", condition: str = "description"):
    """Replaces the LM's ``condition`` conditioner with a T5Conditioner around a random T5.

    Args:
        lm: an audiocraft LMModel whose fuser cross-attends to ``condition``.
        name: a name in audiocraft's ``T5Conditioner.MODELS_DIMS`` (fixes the T5 width).
        arch: the T5 encoder's config (``d_model`` must be that width).
        seed: RNG seed of the random weights (the rest of the LM is left as it is).
        device: where the T5 lives ('meta' for shapes only).
    """
    cls = in_memory_t5_conditioner_class()
    tokenizer = offline_tokenizer()
    assert cls.MODELS_DIMS[name] == arch["d_model"], (name, arch)
    with seeded(seed), torch.device(device):
        t5 = encoder_from_architecture(arch, vocab_size=len(tokenizer),
                                       **{k: v for k, v in arch.items() if k not in ARCH_KEYS})
        conditioner = cls(name, t5, tokenizer, lm.dim, str(device))
    lm.condition_provider.conditioners[condition] = conditioner
    return lm
