"""The bounds a backbone sets on sampling parameters, and their messages in the caller's names.

``top_k`` may not exceed the backbone's tokens per codebook, and ``extend_stride``
must be shorter than its window and at least one codec frame. The library checks
them on the loaded model (:meth:`~vidmusician.generation.guidance.GenerationParams.check`,
``window_frames``); the command line checks them before any model loads for the
backbones it knows by name (:func:`known_limits`), and words the library's
:class:`LimitError` with its own option names (:meth:`LimitError.named`).

No torch here: the command line imports this before anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..hub_reach import BUILT_BACKBONES, is_local_name

__all__ = ["STRIDE_FRACTION", "MAX_DURATION", "MIN_DURATION", "SMALLEST_CARD", "BackboneLimits", "LimitError",
           "known_limits", "check_top_k", "check_extend_stride"]

# audiocraft extends by 18 s of a 30 s window; keep that ratio for other window lengths.
STRIDE_FRACTION = 0.6

# The music's duration, whatever the backbone (here, where the command line reads them before torch loads).
# 24 hours: far beyond any video anyone scores; larger values are typos that would overflow.
MAX_DURATION = 86400.0
MIN_DURATION = 0.02  # one frame of MusicGen's 50 Hz codec


@dataclass(frozen=True)
class BackboneLimits:
    """What bounds the sampling parameters in a backbone.

    Attributes:
        card: tokens per codebook (``lm.card``): top_k's bound.
        window: seconds generated at once (``max_duration``): extend_stride's bound.
        frame_rate: codec frames per second: extend_stride is at least one frame.
    """

    card: int
    window: float
    frame_rate: float

    def check(self, top_k: int, extend_stride: float | None) -> None:
        """Checks both parameters (``extend_stride`` None: the default stride, always valid).

        Raises:
            LimitError: one line naming the parameter as a Python keyword (:meth:`LimitError.named`
                words it otherwise), its value and the bound.
        """
        check_top_k(top_k, self.card)
        if extend_stride is not None:
            check_extend_stride(extend_stride, self.window, self.frame_rate)

    @classmethod
    def of(cls, musicgen) -> "BackboneLimits":
        """The limits of a loaded MusicGen."""
        return cls(int(musicgen.lm.card), float(musicgen.max_duration), float(musicgen.frame_rate))


# The backbones whose shape is known by name, without loading them. Every released MusicGen
# (small, medium, large and their stereo versions) codes 32 kHz audio with EnCodec's 2048
# tokens per codebook at 50 Hz and was trained on 30 s segments; the random ones copy that
# shape; the tiny ones have audiocraft's debug codec (400 tokens per codebook) at 50 Hz.
# (tests/test_bad_input.py checks the tiny ones against the loaded models.)
_MUSICGEN = BackboneLimits(card=2048, window=30.0, frame_rate=50.0)
_TINY = BackboneLimits(card=400, window=30.0, frame_rate=50.0)
_BUILT = {name: _TINY if name.startswith("tiny") else _MUSICGEN for name in BUILT_BACKBONES}
# The fewest tokens per codebook of the backbones known by name: a top-k up to it fits every one of them.
SMALLEST_CARD = min(limits.card for limits in (_MUSICGEN, _TINY))
_RELEASED = {f"facebook/musicgen-{size}": _MUSICGEN
             for size in ("small", "medium", "large", "stereo-small", "stereo-medium", "stereo-large")}


def known_limits(backbone: str) -> BackboneLimits | None:
    """The limits of a backbone known by its name (as ``load_backbone`` takes it); None: known once loaded.

    A local folder (a hub name that is also an existing path loads as that folder)
    and any other hub repository are known only once loaded.
    """
    name = str(backbone)
    if name in _BUILT:  # built by name, whatever lies on disk
        return _BUILT[name]
    if name in _RELEASED and not is_local_name(name):
        return _RELEASED[name]
    return None


class LimitError(ConfigError):
    """A sampling parameter beyond the backbone's bound; :meth:`named` words it in other names.

    Attributes:
        parameter: the Python keyword ('top_k', 'extend_stride').
    """

    def __init__(self, parameter: str, wording, *values, name: str | None = None):
        self.parameter = parameter
        self._wording, self._values = wording, values
        super().__init__(wording(name or parameter, *values))

    def named(self, names: dict[str, str]) -> "LimitError":
        """The same error, naming the parameter as ``names`` spells it (``{"top_k": "--top-k"}``)."""
        return LimitError(self.parameter, self._wording, *self._values, name=names.get(self.parameter))


def check_top_k(top_k: int, card: int) -> None:
    """Refuses a top_k beyond the backbone's ``card`` tokens per codebook (LimitError)."""
    if top_k > card:
        raise LimitError("top_k", _top_k_wording, top_k, card)


def check_extend_stride(stride: float, window: float, frame_rate: float) -> None:
    """Refuses a stride as long as the window, or shorter than one codec frame (LimitError)."""
    if not stride < window:
        raise LimitError("extend_stride", _long_stride_wording, stride, window)
    if int(frame_rate * stride) < 1:
        raise LimitError("extend_stride", _short_stride_wording, stride, frame_rate)


def _said(name: str, value) -> str:
    """``top_k=5000`` for a Python keyword, ``--top-k 5000`` for a command-line option."""
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{name} {shown}" if name.startswith("-") else f"{name}={shown}"


def _top_k_wording(name: str, top_k: int, card: int) -> str:
    return (f"{_said(name, top_k)}: more than the backbone's {card} tokens per codebook; "
            f"use {_said(name, card)} or less (0: no top-k cut)")


def _long_stride_wording(name: str, stride: float, window: float) -> str:
    return (f"{_said(name, stride)}: must be shorter than the backbone's {window:g} s window; "
            f"use less than {window:g} s (default {STRIDE_FRACTION * window:g})")


def _short_stride_wording(name: str, stride: float, frame_rate: float) -> str:
    return (f"{_said(name, stride)}: shorter than one codec frame (1/{frame_rate:g} s); "
            f"use {_said(name, 1 / frame_rate)} or more")
