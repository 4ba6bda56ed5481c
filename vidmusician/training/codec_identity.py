"""Which codec made a dataset's codes: a fingerprint ``prepare`` records and training checks.

Two codecs with the same frame rate, codebooks and sample rate (those of 'tiny' and
'tiny-learned', say) give the same shapes of codes that mean different music: an
LM trained on the other codec's codes learns noise without any error. The
fingerprint tells them apart.
"""

from __future__ import annotations

import hashlib

from ..backbones import built_codec


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
    digests = []
    for tensor in codec.state_dict().values():
        t = tensor.detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h = hashlib.sha256(f"{tuple(t.shape)} {t.dtype}".encode())
        h.update(t.contiguous().numpy().tobytes())
        digests.append(h.digest())
    h = hashlib.sha256(type(codec).__name__.encode())
    for digest in sorted(digests):
        h.update(digest)
    return "sha256:" + h.hexdigest()[:32]
