"""What an adapter depends on in a backbone: its shape, read off a loaded MusicGen.

A low module (no audiocraft import): the config, the presets and the wiring all
read a backbone through :func:`backbone_spec`, and refuse what the adapters do not
support through :func:`check_fuser`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BackboneError


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
