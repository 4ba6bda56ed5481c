"""Which codec made a dataset's codes: a fingerprint ``prepare`` records and training checks.

Two codecs with the same frame rate, codebooks and sample rate (those of 'tiny' and
'tiny-learned', say) give the same shapes of codes that mean different music: an
LM trained on the other codec's codes learns noise without any error. The
fingerprint tells them apart.
"""

from __future__ import annotations

from ..backbones import built_codec
from ..runtime import weights_digest


def codec_identity(name: str, codec) -> str:
    """The fingerprint of a backbone's codec: equal for the same codec, whatever carried it.

    A codec built from a name ('tiny', 'random-small', ...) is named ``built:NAME``: its
    weights are computed (seeded random draws, k-means), and computed floats can differ
    in their last bits between CPUs, so hashing them could refuse a dataset on another
    machine. A loaded codec (a hub name or a folder) is its weights, as loaded:
    ``sha256:`` of its class and of every tensor of its state dict (shape and float32
    bytes), taken in sorted order of the tensors' own hashes, so that neither the
    parameter names (weight norm's changed between torch versions) nor the backbone
    that carried it (musicgen-small and -medium share one codec) change it.

    Args:
        name: the backbone's name as given to ``load_backbone`` / ``load_codec``.
        codec: its compression model.
    """
    built = built_codec(str(name))
    if built is not None:
        return f"built:{built}"
    return "sha256:" + weights_digest(codec.state_dict().values(), salt=type(codec).__name__)
