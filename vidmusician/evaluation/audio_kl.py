"""KL divergence of audio-classifier outputs, generated vs reference music.

The metric MusicGen reports (Copet et al., 2023): audiocraft's
``PasstKLDivergenceMetric``, which takes PaSST's (Koutini et al., 2022)
AudioSet class distribution of each 10 s segment of each clip, pairs a
generated clip with its reference, and averages ``KL(reference || generated)``
over the pairs. PaSST's weights (``hear21passt``) download on first use.

This module imports audiocraft, so it is imported only when the metric is
asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..adapter.audiocraft_internals import passt_kl_metric_class
from ..errors import ConfigError
from .downloads import check_download, download_timeout, weights_unavailable
from .onsets import load_audio


class PasstKL(passt_kl_metric_class()):
    """audiocraft's PaSST KL metric, optionally around a classifier given here.

    Args:
        model: A PaSST ``PasstBasicWrapper`` in ``"logits"`` mode (e.g. a tiny
            random one for tests); ``None``: hear21passt's pretrained AudioSet
            model, as audiocraft loads it.
    """

    def __init__(self, model: Any = None):
        url = _passt_weights_url()
        if model is None and url:  # not in the cache, offline or unreachable: said before hear21passt says a word
            check_download(PASST_WEIGHTS_NAME, url, passt_fix(url))
        try:
            with download_timeout():  # a network that never answers: one line, not a wait for good
                super().__init__(model)
        except ModuleNotFoundError:
            raise ConfigError("the KL divergence needs hear21passt: `pip install hear21passt`") from None
        except OSError as exc:  # hear21passt downloads its weights on first use
            raise weights_unavailable(PASST_WEIGHTS_NAME, exc, passt_fix(url)) from None


PASST_WEIGHTS_NAME = "PaSST's AudioSet weights (hear21passt, for the KL divergence, --kl)"


def passt_fix(url: str | None) -> str:
    """How to do without downloading PaSST's weights."""
    copy = f"put a copy of {url} into that folder, or " if url else ""
    return f"{copy}leave out --kl"


def _passt_weights_url() -> str | None:
    """Where hear21passt downloads the AudioSet model audiocraft loads (None: not found in this version)."""
    try:
        from hear21passt.models.passt import default_cfgs

        return default_cfgs[PASST_ARCH]["url"] or None
    except (ImportError, KeyError, TypeError):
        return None


# PaSST's input rate (audiocraft's segment bounds for it are 10 s and 0.15 s).
PASST_SAMPLE_RATE = PasstKL.sample_rate
# The model hear21passt.base.get_basic_model builds, which audiocraft's metric loads.
PASST_ARCH = "passt_s_swa_p16_128_ap476"


def passt_kl_divergence(
    generated: Sequence[str | Path], reference: Sequence[str | Path], metric: PasstKL | None = None
) -> dict[str, float]:
    """Mean KL divergence of PaSST's label distributions over pairs of files.

    Each pair is cut to its shorter file (audiocraft's metric compares equal
    lengths).

    Args:
        generated: Generated music files.
        reference: The reference file of each, in the same order.
        metric: The metric (a new :class:`PasstKL` with the pretrained model
            by default).

    Returns:
        ``{"kld": KL(reference || generated), "kld_qp": KL(generated ||
        reference), "kld_both": their sum}``, means over the pairs.
    """
    if len(generated) != len(reference) or not generated:
        raise ConfigError("the KL divergence needs pairs of generated and reference files")
    metric = PasstKL() if metric is None else metric
    metric.reset()
    for gen_file, ref_file in zip(generated, reference):
        gen, ref = (torch.from_numpy(load_audio(f, PASST_SAMPLE_RATE)) for f in (gen_file, ref_file))
        n = min(len(gen), len(ref))
        rate = torch.tensor([PASST_SAMPLE_RATE])
        metric.update(gen[None, None, :n], ref[None, None, :n], torch.tensor([n]), rate)
    if int(metric.weight) == 0:
        raise ConfigError("every clip is shorter than PaSST's 0.15 s minimum; the KL divergence needs longer music")
    out = metric.compute()
    return {k: float(out[k]) for k in ("kld", "kld_qp", "kld_both")}
