"""Every use of audiocraft 1.3.0's private API, in one place: what to check on an upgrade.

- :class:`~audiocraft.modules.streaming.StreamingModule` subclasses keep per-generation
  state in ``_streaming_state`` (cleared by audiocraft's ``streaming()`` context) and read
  ``_is_streaming``: the wrappers of :mod:`vidmusician.adapter.wiring` do so, as
  audiocraft's own streaming modules do.
- :func:`streaming_position`: a streaming transformer's position, ``_streaming_state['offsets']``.
- :func:`text_conditions`: ``MusicGen._prepare_tokens_and_attributes``, so text prompts are
  conditioned exactly as ``MusicGen.generate`` conditions them.
- :func:`in_memory_t5_conditioner_class`: ``T5Conditioner``'s attributes set by hand.

audiocraft itself is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations


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
