"""vidmusician: video-to-music generation with trainable adapters on a frozen MusicGen.

Public API::

    from vidmusician import generate, generate_many, write_output, attach_adapters, load_adapter, VidMusician, AdapterConfig
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

__version__ = "0.1.0"

if importlib.util.find_spec("audiocraft") is None:  # pragma: no cover - depends on the install
    raise ImportError(
        "vidmusician needs audiocraft, which is not installed. Install it without its "
        "outdated pins: `pip install --no-deps audiocraft==1.3.0` (then its runtime "
        "dependencies; `make setup` in the vidmusician repo does all of it)."
    )

# audiocraft imports xformers at module level; on builds without its C++ ops
# xformers logs a multi-line warning although audiocraft's default attention
# backend ('torch') never uses them. Quiet it unless the user set a level.
if logging.getLogger("xformers").level == logging.NOTSET:
    logging.getLogger("xformers").setLevel(logging.ERROR)

# Public names, imported on first use so `import vidmusician` stays light.
_EXPORTS = {
    "AdapterConfig": "vidmusician.config",
    "attach_adapters": "vidmusician.model",
    "load_adapter": "vidmusician.model",
    "VidMusician": "vidmusician.model",
    "VideoBatch": "vidmusician.adapter.context",
    "load_backbone": "vidmusician.backbones",
    "tiny_musicgen": "vidmusician.testing.random_backbones",
    "random_musicgen": "vidmusician.testing.random_backbones",
    "load_preset": "vidmusician.sizing",
    "config_for_backbone": "vidmusician.sizing",
    "generate": "vidmusician.pipeline",  # a module named generate would shadow the function
    "generate_many": "vidmusician.batch",
    "load_encoder": "vidmusician.video.encoders",
    "extract_features": "vidmusician.video.features",
    "VideoFeatures": "vidmusician.video.features",
    "probe": "vidmusician.video.reader",
    "VidMusicianError": "vidmusician.errors",
    "write_output": "vidmusician.muxing",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vidmusician' has no attribute {name!r}")
