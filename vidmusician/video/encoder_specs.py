"""Encoder specs: what a spec names, which MLP activation it gets, and whether features fit an adapter.

The activation is part of an encoder's identity: OpenAI's CLIP was trained with
QuickGELU (``x * sigmoid(1.702 x)``), and the same weights run with GELU give
other features. open_clip builds ``ViT-B-32`` with GELU unless told otherwise
(a ``-quickgelu`` name, ``force_quick_gelu``), so :func:`resolve_encoder`
decides it per spec form:

- ``NAME:TAG``: the pretrained tag's own config (``quick_gelu`` in open_clip's
  pretrained table; True for ``ViT-B-32:openai``), else NAME's config;
- ``NAME:/path/ViT-B-32.pt`` that is a TorchScript archive (OpenAI's released
  format): QuickGELU, read by open_clip's OpenAI loader;
- ``NAME:/path/state_dict`` and ``NAME``: NAME's config (``ViT-B-32`` GELU,
  ``ViT-B-32-quickgelu`` QuickGELU): a state dict does not say how it was trained;
- a folder, ``local-dir:`` or ``hf-hub:``: the folder's ``open_clip_config.json``;
- ``tiny``: GELU.

Files written before the activation was recorded (feature files, datasets,
adapter folders) hold none; they were made with what open_clip's config for the
architecture gives, tag and file format ignored (:func:`legacy_activation`).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, did_you_mean, differing_fields

QUICK_GELU = "quick_gelu"
GELU = "gelu"
ACTIVATION_NAMES = {QUICK_GELU: "QuickGELU", GELU: "GELU"}

DEFAULT_ENCODER = "ViT-B-32:openai"
TINY_SPEC = "tiny"
# What :func:`natural_activation` finds for these specs, known without importing open_clip
# (and torch): OpenAI's CLIP was trained with QuickGELU, which its tag's config says; the
# tiny architecture's config has GELU. tests/test_presets.py checks them against open_clip.
KNOWN_ACTIVATIONS = {DEFAULT_ENCODER: QUICK_GELU, TINY_SPEC: GELU}
TINY_MODEL_NAME = "vidmusician-tiny"
# Fixed so that every process builds the same random tiny encoder: features
# cached or stored by one test run stay valid in the next.
TINY_SEED = 0
# The tiny architecture, as data in open_clip's model-config format. 32 px images
# in 8 px patches give a 4x4 grid (16 patch tokens), like ViT-B-32's 7x7 in small.
# The text tower is required by open_clip's CLIP class; it is dropped after
# building, and kept minimal (vocab 64) so building it costs nothing.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class EncoderPlan:
    """How :func:`vidmusician.video.encoders.load_encoder` builds a spec, decided without loading weights.

    Attributes:
        spec: The spec.
        model_name: open_clip model name, or a ``local-dir:``/``hf-hub:`` name.
        pretrained: Pretrained tag or checkpoint file, or None.
        openai_archive: The checkpoint is a TorchScript archive (OpenAI's format).
        activation: ``"quick_gelu"`` or ``"gelu"``, what is built; None when the
            folder's or hub repo's config decides.
        trained_with: The activation the weights were trained with (differs from
            ``activation`` only when the caller asked for another one).
        fingerprint: What identifies the features it makes (for the feature cache).
    """

    spec: str
    model_name: str
    pretrained: str | None
    openai_archive: bool
    activation: str | None
    trained_with: str | None
    fingerprint: str

    def create_kwargs(self) -> dict:
        """The activation arguments for ``open_clip.create_model`` (none when the folder's config decides)."""
        if self.activation is None:
            return {}
        # force_quick_gelu (rather than the model kwarg) keeps open_clip's tag check quiet.
        return {"force_quick_gelu": True} if self.activation == QUICK_GELU else {"quick_gelu": False}


def resolve_encoder(spec: str | None, activation: str | None = None) -> EncoderPlan:
    """Resolves a spec to open_clip's arguments and the activation (see the module docstring).

    Args:
        spec: An encoder spec; None for ``ViT-B-32:openai``.
        activation: Build with this activation instead of the one the weights were
            trained with (an adapter trained on such features expects it).

    Returns:
        The :class:`EncoderPlan`; nothing is loaded or downloaded.

    Raises:
        ConfigError: Unknown model or tag, missing checkpoint, unknown activation.
    """
    spec = spec or DEFAULT_ENCODER
    if activation is not None and activation not in ACTIVATION_NAMES:
        raise ConfigError(f"unknown encoder activation {activation!r}; use one of {sorted(ACTIVATION_NAMES)}")
    model_name, pretrained, files = _parse_spec(spec)
    archive = pretrained is not None and _is_torchscript(pretrained)
    if model_name.startswith(("local-dir:", "hf-hub:")):
        trained_with = None
    elif archive:
        trained_with = QUICK_GELU  # OpenAI's archives hold OpenAI's CLIP, trained with QuickGELU
    else:
        trained_with = _tag_activation(model_name, pretrained) or config_activation(model_name)
    built = activation or trained_with
    stats = _file_stats(files) if files else []
    base = f"{TINY_MODEL_NAME}:seed{TINY_SEED}" if spec == TINY_SPEC else spec
    return EncoderPlan(spec, model_name, pretrained, archive, built, trained_with, json.dumps([base, built, stats]))


def config_activation(model_name: str) -> str:
    """The activation open_clip's model config ``model_name`` gives (``-quickgelu`` names: QuickGELU)."""
    import open_clip

    cfg = open_clip.get_model_config(model_name.replace("/", "-")) or {}
    return QUICK_GELU if cfg.get("quick_gelu", False) else GELU


def legacy_activation(spec: str | None) -> str | None:
    """The activation of features recorded without one: open_clip's config for the architecture.

    Before the activation was recorded, encoders were built from the model config
    alone (a pretrained tag's ``quick_gelu`` ignored: ``ViT-B-32:openai`` ran with
    GELU). None for folder and hub specs (their config decided then as now) and for
    architectures open_clip does not know.
    """
    spec = spec or DEFAULT_ENCODER
    if spec == TINY_SPEC:
        return GELU
    name = spec.partition(":")[0]
    if spec.startswith(("local-dir:", "hf-hub:")) or os.path.isdir(spec):
        return None
    import open_clip

    _register_tiny()
    return config_activation(name) if name.replace("/", "-") in open_clip.list_models() else None


def check_encoder_fit(config, source: str, encoder: str, activation: str | None, dims=None, *,
                      error: type[Exception] = ConfigError, same_spec: bool = False, fix: str | None = None) -> None:
    """Checks that features made by ``encoder`` (with ``activation``, of ``dims``) can feed an adapter.

    The one place that compares features (or an encoder, or a dataset) with what
    an adapter was trained on. A different activation or width is refused; a
    different spec is refused with ``same_spec``, else a warning.

    Args:
        config: The adapter's :class:`~vidmusician.config.AdapterConfig`.
        source: What made the features, for the message (a file, ``visual encoder 'X'``).
        encoder: The spec that made them.
        activation: Their activation; None when not recorded (see :func:`legacy_activation`).
            The adapter's ``encoder_activation`` None means its encoder's own.
        dims: ``(global_dim, local_dim)`` of the features, or None to skip.
        error: Exception class to raise (ConfigError, DataError).
        same_spec: The spec must equal the adapter's.
        fix: What to do, ending the message (default: use the adapter's encoder; or, for
            the adapter's own encoder at other widths, size the config: :func:`sized_for_another`).

    Raises:
        error: One line naming both sides and the fix.
    """
    own_encoder = fix is None and encoder == config.encoder  # other widths: the config is what to change
    fix = fix or f"use the adapter's encoder {config.encoder!r} (a video file is encoded as the adapter expects)"
    mismatch = f"{source}: features from encoder {encoder!r} do not fit the adapter trained on {config.encoder!r}"
    if dims is not None:
        widths = dict(global_dim=dims[0], local_dim=dims[1])
        diffs = differing_fields(widths, config, list(widths), ("features", "adapter"))
        if diffs and own_encoder:
            raise error(f"{source}: {sized_for_another(config, widths, diffs)}")
        if diffs:
            raise error(f"{mismatch} ({diffs}); {fix}")
    have = activation or legacy_activation(encoder)
    want = config.encoder_activation or natural_activation(config.encoder)
    if have is not None and want is not None and have != want:
        raise error(f"{source}: features made with {ACTIVATION_NAMES[have]} ({encoder!r}), the adapter was trained "
                    f"on {ACTIVATION_NAMES[want]} features ({config.encoder!r}); {fix}")
    if encoder != config.encoder:
        if same_spec:
            raise error(f"{mismatch}; {fix}")
        warnings.warn(f"{source}: features from encoder {encoder!r}, the adapter was trained with "
                      f"{config.encoder!r}; the music may not follow the video", stacklevel=3)


def sized_for_another(config, widths: dict, diffs: str) -> str:
    """Why features of the adapter's own encoder do not fit it, and the fix (no source named).

    The config names the encoder but kept another encoder's widths
    (``config_for_backbone(musicgen, encoder=...)`` alone keeps the preset's), so
    encoding the video again would not help: the config must be sized to the features.

    Args:
        config: The adapter's :class:`~vidmusician.config.AdapterConfig`.
        widths: The features' ``global_dim`` and ``local_dim``.
        diffs: Their difference from the config's (:func:`~vidmusician.errors.differing_fields`).
    """
    return (f"features of encoder {config.encoder!r} do not fit the adapter ({diffs}): its config names that "
            f"encoder but is sized for another; size it to the features, e.g. config_for_backbone(musicgen, "
            f"encoder={config.encoder!r}, global_dim={widths['global_dim']}, local_dim={widths['local_dim']})")


def check_batch_fit(config, batch, encoders: set | None = None, local_rates: set | None = None) -> None:
    """Refuses a :class:`~vidmusician.adapter.context.VideoBatch` the adapter of ``config`` cannot read.

    Args:
        config: The adapter's :class:`~vidmusician.config.AdapterConfig`.
        batch: The batch: its widths, codec rate and global rate are checked.
        encoders, local_rates: the specs and local rates of the features it was made from,
            where known (a batch's local signal is at the codec's rate, its own rate lost).

    Raises:
        ConfigError: One line: the misfit and the fix.
    """
    c = config
    widths = dict(global_dim=batch.global_feats.shape[-1], local_dim=batch.local.shape[-1])
    diffs = differing_fields(widths, c, list(widths), ("features", "adapter"))
    if diffs and encoders == {c.encoder}:
        raise ConfigError(f"video {sized_for_another(c, widths, diffs)}")
    if diffs:
        raise ConfigError(f"video features do not fit the adapter ({diffs}); extract them with encoder {c.encoder!r}")
    if abs(batch.frame_rate - c.frame_rate) > 1e-6:
        raise ConfigError(f"video batch aligned to {batch.frame_rate} Hz, the codec runs at {c.frame_rate} Hz")
    # Null videos have no rate.
    rates = dict(global_fps={batch.global_fps} if bool(batch.present.any()) else (), local_fps=local_rates or ())
    misfit = rate_misfit(c, rates)
    if misfit:
        field, want, words = misfit
        raise ConfigError(f"video features have {words}; extract them at the adapter's rate "
                          f"({field}={want:g}; --{field.replace('_', '-')} {want:g} on the command line)")


def rate_misfit(config, rates: dict) -> tuple[str, float, str] | None:
    """The first feature rate the adapter does not read: ``(field, adapter's rate, words)``.

    Both rates are part of what an adapter learned. Its memory's positions count
    global frames: features at another ``global_fps`` put every frame at another
    time. The change signal is the difference between consecutive local frames:
    at another ``local_fps`` it measures change over another span (0.1 s at 10 fps,
    not the 40 ms of 25 fps), with other statistics than the rhythm adapter learned.

    Args:
        config: The adapter's :class:`~vidmusician.config.AdapterConfig`.
        rates: ``global_fps`` and/or ``local_fps`` -> the rates the features have.

    Returns:
        None when every rate is the adapter's, else e.g. ``("local_fps", 25.0,
        "10 local frames per second, the adapter reads 25")`` for the caller's line.
    """
    for field, found in rates.items():
        want = getattr(config, field)
        for rate in sorted(found):
            if abs(rate - want) > 1e-6:
                kind = field.removesuffix("_fps")
                return field, want, f"{rate:g} {kind} frames per second, the adapter reads {want:g}"
    return None


def natural_activation(spec: str | None) -> str | None:
    """The activation the weights of ``spec`` were trained with; None when the spec does not resolve here."""
    if spec in KNOWN_ACTIVATIONS:
        return KNOWN_ACTIVATIONS[spec]
    try:
        return resolve_encoder(spec).trained_with
    except ConfigError:  # e.g. an adapter's checkpoint path from another machine
        return None


def _parse_spec(spec: str) -> tuple[str, str | None, Path | None]:
    """Splits a spec into open_clip's (model_name, pretrained) and the weight file(s) to fingerprint."""
    import open_clip

    _register_tiny()  # also makes "vidmusician-tiny:/path/to/checkpoint" a valid spec
    if spec == TINY_SPEC:
        return TINY_MODEL_NAME, None, None
    if spec.startswith(("hf-hub:", "local-dir:")):
        path = spec.split(":", 1)[1]
        return spec, None, Path(path) if spec.startswith("local-dir:") else None
    if os.path.isdir(spec):
        return f"local-dir:{spec}", None, Path(spec)
    if os.path.isfile(spec):
        raise ConfigError(f"visual encoder {spec!r}: a checkpoint file needs its architecture, e.g. ViT-B-32:{spec}")
    name, _, pretrained = spec.partition(":")
    if name.replace("/", "-") not in open_clip.list_models():
        # 'tny' meant 'tiny', 'ViT-B-23' 'ViT-B-32': the close name, when there is one.
        hint = did_you_mean(name, [TINY_SPEC, *(m for m in open_clip.list_models() if m != TINY_MODEL_NAME)])
        raise ConfigError(
            f"visual encoder {spec!r}: unknown open_clip model {name!r} "
            f"(e.g. ViT-B-32, ViT-B-16, ViT-L-14; see open_clip.list_models()), or a folder that does not exist{hint}"
        )
    if not pretrained:
        return name, None, None
    if os.path.isfile(pretrained):
        return name, pretrained, Path(pretrained)
    if pretrained in open_clip.list_pretrained_tags_by_model(name):
        return name, pretrained, None
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ConfigError(f"visual encoder {spec!r}: checkpoint {pretrained} not found")
    known = open_clip.list_pretrained_tags_by_model(name)
    tags = ", ".join(known[:6]) + (f", ... ({len(known)} in all)" if len(known) > 6 else "") if known else "none"
    raise ConfigError(f"visual encoder {spec!r}: unknown pretrained tag {pretrained!r} for {name} (known: {tags})")


def _tag_activation(model_name: str, pretrained: str | None) -> str | None:
    """QuickGELU when open_clip's pretrained config for the tag says so (``ViT-B-32:openai``), else None."""
    from open_clip import get_pretrained_cfg

    if pretrained is None or os.path.isfile(pretrained):
        return None
    cfg = get_pretrained_cfg(model_name.replace("/", "-"), pretrained) or {}
    return QUICK_GELU if cfg.get("quick_gelu", False) else None


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive: a zip with compiled code (``torch.save`` zips have only data)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):  # not a zip: a pickle or safetensors state dict
        return False


def _file_stats(path: Path) -> list:
    """Name, size and mtime of the weight file(s): a replaced checkpoint is a new encoder."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _register_tiny() -> None:
    """Adds TINY_CONFIG to open_clip's model registry (once per process).

    open_clip's public way to add an architecture is a JSON file
    (``add_model_config``); the file is only read during registration.
    """
    import tempfile

    import open_clip

    if TINY_MODEL_NAME in open_clip.list_models():
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{TINY_MODEL_NAME}.json"
        path.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(path)
