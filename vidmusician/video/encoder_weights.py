"""Whether a visual encoder's weights can be had now: in the Hugging Face cache, or from a Hub that answers.

open_clip downloads a pretrained tag's weights through ``huggingface_hub``, which
retries a failing connection for about half a minute per file (two files for
``ViT-B-32:openai``), then raises an error whose last words say little.
:func:`check_weights_available` answers in a second, before anything is
downloaded: weights in the cache, or a Hub that answers one request, let the
load go on; otherwise one line names the weights and the fixes.
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from .encoder_specs import TINY_SPEC, resolve_encoder

# Seconds the one probe of the Hub may take: a reachable Hub answers in well under a second.
PROBE_TIMEOUT = 5.0


def hub_weights(spec: str | None) -> tuple[str, tuple[str, ...]] | None:
    """The Hub repository and the files open_clip would download a spec's weights from, any one of which will do.

    None when the weights do not come from the Hugging Face Hub (a checkpoint file,
    a folder, a URL, the tiny encoder, random weights).
    """
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    plan = resolve_encoder(spec)
    if plan.spec == TINY_SPEC or plan.model_name.startswith("local-dir:"):
        return None
    if plan.model_name.startswith("hf-hub:"):
        return plan.model_name.removeprefix("hf-hub:"), ("open_clip_config.json",)
    if plan.pretrained is None or os.path.isfile(plan.pretrained):
        return None
    hub = (open_clip.get_pretrained_cfg(plan.model_name, plan.pretrained) or {}).get("hf_hub")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    # open_clip takes the safetensors twin of a pickled file first, under these names.
    if filename == HF_WEIGHTS_NAME:
        return repo, (HF_SAFE_WEIGHTS_NAME, filename)
    if filename.endswith((".bin", ".pth")):
        return repo, (filename[:-4] + ".safetensors", filename)
    return repo, (filename,)


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached now (None: it answered one request, without retries)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT)
    except Exception:  # any failure to get an answer (DNS, refused, timeout, TLS, proxy) is "cannot reach"
        return f"{constants.ENDPOINT} cannot be reached"
    return None


def check_weights_available(spec: str | None) -> None:
    """Refuses at once (one line with the fixes) a spec whose weights are neither cached nor downloadable now.

    Args:
        spec: the encoder spec (None: the default).

    Raises:
        ConfigError: the weights come from the Hub, are not in its cache, and the Hub cannot be reached.
    """
    from huggingface_hub import try_to_load_from_cache

    where = hub_weights(spec)
    if where is None:
        return
    repo, files = where
    if any(isinstance(try_to_load_from_cache(repo, name), str) for name in files):
        return
    why = hub_unreachable()
    if why is None:
        return  # the download can go ahead
    offline = why.startswith("HF_HUB_OFFLINE")
    spec = resolve_encoder(spec).spec
    raise ConfigError(
        f"visual encoder {spec!r}: its weights ({repo}) are not in the Hugging Face cache and {why}; "
        f"download them once with a network connection, or pass --encoder with weights on disk "
        f"(NAME:/path/to/checkpoint, a folder; --encoder tiny for a quick check)"
        + ("" if offline else "; working offline, set HF_HUB_OFFLINE=1 so that nothing waits for the network"))
