"""Every use of audiocraft 1.3.0's private API, in one place: what to check on an upgrade.

- :func:`streaming_state` and :func:`is_streaming`: a
  :class:`~audiocraft.modules.streaming.StreamingModule`'s per-generation state
  (``_streaming_state``, cleared by audiocraft's ``streaming()`` context) and whether it
  streams (``_is_streaming``); the wrappers of :mod:`vidmusician.adapter.wiring` keep their
  state there, as audiocraft's own streaming modules do.
- :func:`streaming_position`: a streaming transformer's position, ``_streaming_state['offsets']``.
- :func:`text_conditions`: ``MusicGen._prepare_tokens_and_attributes``, so text prompts are
  conditioned exactly as ``MusicGen.generate`` conditions them.
- :func:`in_memory_t5_conditioner_class`: ``T5Conditioner``'s attributes set by hand.
- :func:`codebooks`: the ``EuclideanCodebook`` of each residual quantizer layer (``_codebook``),
  whose tables the test backbones set.
- :func:`passt_kl_metric_class`: ``PasstKLDivergenceMetric`` around a given classifier, by
  overriding ``_load_base_model`` and calling ``_initialize_model``; its per-clip label
  distribution (``_get_label_distribution``).

Nothing else in the project (package, tests, benchmarks) uses a private name of
audiocraft: ``tests/test_layout.py`` lists them.

audiocraft itself is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations


def streaming_state(module) -> dict:
    """A ``StreamingModule``'s per-generation state, a dict that audiocraft's ``streaming()`` empties on exit.

    Keys must have no dots: audiocraft prefixes the module's path to gather a model's state.
    """
    return module._streaming_state


def is_streaming(module) -> bool:
    """Whether a ``StreamingModule`` is inside audiocraft's ``streaming()`` context (generation step by step)."""
    return module._is_streaming


def streaming_position(transformer) -> int:
    """The sequence position a streaming ``StreamingTransformer`` is at (0 outside streaming)."""
    offsets = transformer._streaming_state.get("offsets")
    return int(offsets[0]) if offsets is not None else 0


def text_conditions(musicgen, texts) -> list:
    """audiocraft ``ConditioningAttributes`` for text prompts (None: no text), as ``MusicGen.generate`` makes them."""
    attributes, _ = musicgen._prepare_tokens_and_attributes(texts, None)
    return attributes


def in_memory_t5_conditioner_class():
    """audiocraft's ``T5Conditioner`` made from a T5 and tokenizer in memory (random T5s of tests and benchmarks).

    Sets ``T5Conditioner``'s attributes by hand (its ``__init__`` only downloads by name):
    relies on the attributes ``tokenize`` and ``forward`` read.
    """
    from audiocraft.modules.conditioners import T5Conditioner, TextConditioner
    from audiocraft.modules.conditioners import TorchAutocast

    class InMemoryT5Conditioner(T5Conditioner):
        """audiocraft's ``T5Conditioner`` around a T5 and a tokenizer built in memory.

        ``T5Conditioner.__init__`` can only download a model by its hub name; this sets
        the same attributes from given objects instead (for a frozen, CPU/GPU T5 without
        autocast, what MusicGen's configs ask for). ``tokenize`` and ``forward`` are
        audiocraft's own, so prompts are encoded exactly as with a released model.
        """

        def __init__(self, name: str, t5, tokenizer, output_dim: int, device: str):
            TextConditioner.__init__(self, T5Conditioner.MODELS_DIMS[name], output_dim)
            self.device, self.name, self.finetune, self.word_dropout = device, name, False, 0.0
            self.autocast = TorchAutocast(enabled=False)
            self.t5_tokenizer = tokenizer
            # Outside the module tree, as audiocraft keeps a frozen T5 (not in the LM's state dict).
            self.__dict__["t5"] = t5.to(device)
            self.normalize_text = False

    return InMemoryT5Conditioner


def codebooks(quantizer) -> list:
    """The ``EuclideanCodebook`` of each layer of an audiocraft ``ResidualVectorQuantizer`` (first layer first).

    Each holds ``embed`` (the [bins, dim] table), ``embed_avg``, ``inited`` and
    ``init_embed_`` (k-means on the first batch when not ``inited``).
    """
    return [layer._codebook for layer in quantizer.vq.layers]


def passt_kl_metric_class():
    """audiocraft's ``PasstKLDivergenceMetric``, optionally around a PaSST classifier given in memory.

    The parent's ``__init__`` loads hear21passt's pretrained model at once; this class
    sets up the metric state through the grandparent's ``__init__`` and then takes the
    given model (or the pretrained one) through ``_load_base_model``, audiocraft's own path.
    """
    from audiocraft.metrics.kld import KLDivergenceMetric, PasstKLDivergenceMetric

    class PasstKLMetric(PasstKLDivergenceMetric):
        """``PasstKLDivergenceMetric`` around ``model`` (None: hear21passt's pretrained AudioSet model)."""

        #: PaSST's input rate; audiocraft's segment bounds for it are 10 s and 0.15 s.
        sample_rate = 32000

        def __init__(self, model=None):
            KLDivergenceMetric.__init__(self)
            self._given = [model]  # a list, so nn.Module does not register it twice
            self._initialize_model()

        def _load_base_model(self, pretrained_length=None):
            if self._given[0] is None:
                return super()._load_base_model(pretrained_length)
            sr = self.sample_rate
            return self._given[0], sr, 10 * sr, int(0.15 * sr)

        def label_distribution(self, wav, sizes, sample_rates):
            """PaSST's class distribution of each clip of ``wav`` [B, C, T] (audiocraft's, segments averaged)."""
            return self._get_label_distribution(wav, sizes, sample_rates)

    return PasstKLMetric
