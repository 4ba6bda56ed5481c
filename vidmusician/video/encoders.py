"""The visual encoder: an open_clip vision tower and its preprocessing, on batches of tensors.

:func:`load_encoder` builds one from a spec:

- ``None`` -> ``ViT-B-32:openai`` (the paper's encoder);
- ``NAME:TAG`` -> open_clip's pretrained weights (downloaded once to open_clip's cache);
- ``NAME:/path/to/checkpoint`` -> that checkpoint file for architecture NAME: a state
  dict (``.pt``/``.bin``/``.safetensors``), or OpenAI's TorchScript archive
  (``ViT-B-32.pt``, read by open_clip's OpenAI loader);
- ``/path/to/dir`` or ``local-dir:/path`` or ``hf-hub:org/repo`` -> open_clip's folder
  format (``open_clip_config.json`` + weights);
- ``NAME`` -> random weights (with a warning);
- ``tiny`` -> a tiny random ViT registered as an open_clip model config: fixed
  seed, no download, fast on CPU; for tests and offline checks.

The MLP activation (QuickGELU for OpenAI's CLIP, GELU otherwise) follows the
weights, as :mod:`vidmusician.video.encoder_specs` resolves it per spec form, and is
recorded as :attr:`VisualEncoder.activation`.

Preprocessing follows the model's own open_clip preprocess config (size, resize
mode, interpolation, mean/std), so a checkpoint brings its normalization with it.
It runs on uint8 ``[N, 3, H, W]`` batches on the encoder's device instead of PIL
frame by frame. When the frames were decoded at :meth:`VisualEncoder.resize_size`
(what :func:`vidmusician.video.features.extract_features` does), the resize already
happened in the decoder and only crop and normalization remain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings

import torch

from ..errors import ConfigError, one_line
from ..runtime import default_device, seeded, weights_digest
from .encoder_weights import check_weights_available
from .encoder_specs import (ACTIVATION_NAMES, DEFAULT_ENCODER, GELU, QUICK_GELU, TINY_CONFIG, TINY_MODEL_NAME,
                            TINY_SEED, TINY_SPEC, EncoderPlan, resolve_encoder)

# Rows of every projection matmul in :meth:`VisualEncoder.embed`: a batch's embeddings
# are computed in blocks of this many, the last one padded.
_PROJ_ROWS = 64

__all__ = ["DEFAULT_ENCODER", "VisualEncoder", "encoder_fingerprint", "load_encoder", "TINY_CONFIG", "TINY_MODEL_NAME"]


class VisualEncoder:
    """A frozen open_clip vision transformer returning image embeddings and patch tokens.

    Args:
        visual: The vision tower of an open_clip model (``model.visual``), a
            ``VisionTransformer``.
        name: The spec it was built from (recorded in features files).
        fingerprint: What identifies its features for the feature cache (the spec,
            the activation, size and mtime of a local checkpoint). None (an encoder
            built in your code) or "": a hash of its weights and preprocessing, taken
            when the cache first asks (weights changed in place after that keep the
            key: build a new encoder); pass a key of your own to skip that hashing.
        device: Where it runs.

    Attributes:
        name: The spec it was built from, e.g. ``ViT-B-32:openai`` or ``tiny``.
        activation: The MLP activation of its blocks, ``"quick_gelu"`` or ``"gelu"``
            (read from the model): part of what the features are.
        global_dim: Embedding dimension (512 for ViT-B-32, 32 for tiny).
        num_patches: Patch tokens per frame (49 for ViT-B-32 at 224 px, 16 for tiny).
        token_dim: Width of a patch token (768 for ViT-B-32, 64 for tiny).
        image_size: ``(height, width)`` the model sees.
        preprocess_cfg: open_clip's preprocess config for these weights.
        device: The device it runs on.
    """

    def __init__(self, visual: torch.nn.Module, name: str, fingerprint: str | None = None, device=None):
        from open_clip.transform import PreprocessCfg

        if not hasattr(visual, "output_tokens") or not hasattr(visual, "grid_size"):
            raise ConfigError(
                f"visual encoder {name!r}: {type(visual).__name__} has no patch tokens; use an open_clip ViT"
            )
        self.name = name
        self.activation = _activation_of(visual, name)
        self._fingerprint = fingerprint
        self.device = torch.device(device or "cpu")
        # Frozen feature extractor: eval mode (no dropout), no gradients.
        self.model = visual.to(self.device).eval().requires_grad_(False)
        # An instance attribute, read by VisionTransformer.forward: also return tokens.
        self.model.output_tokens = True
        # The projection runs in :meth:`embed`, in fixed-shape blocks (see there);
        # open_clip's forward skips it when ``proj`` is None (as its layer pruning does).
        self._proj, self.model.proj = self.model.proj, None
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        cfg.setdefault("size", visual.image_size)
        self.preprocess_cfg = PreprocessCfg(**cfg)
        size = self.preprocess_cfg.size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.num_patches = int(visual.grid_size[0] * visual.grid_size[1])
        self.token_dim = int(visual.transformer.width)
        self.global_dim = int(visual.output_dim)
        self._mean = torch.tensor(self.preprocess_cfg.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess_cfg.std, device=self.device).view(1, 3, 1, 1)

    @property
    def fingerprint(self) -> str:
        """What identifies its features for the feature cache (see ``fingerprint`` above)."""
        if not self._fingerprint:
            # A name alone would let two encoders of one name share cached features: their
            # weights and preprocessing tell them apart (hashed once, on first use).
            config = json.dumps(dataclasses.asdict(self.preprocess_cfg), sort_keys=True, default=str)
            tensors = [*self.model.state_dict().values(), *([self._proj] if self._proj is not None else [])]
            self._fingerprint = f"{self.name}|{self.activation}|weights:{weights_digest(tensors, salt=config)}"
        return self._fingerprint

    def __repr__(self) -> str:
        return (
            f"VisualEncoder({self.name!r}, activation={self.activation!r}, global_dim={self.global_dim}, num_patches={self.num_patches}, "
            f"image_size={self.image_size}, device={self.device})"
        )

    def resize_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` open_clip's transform resizes a frame of this size to.

        Decoding at this size makes the decoder do the resize; what is left (center
        crop or pad, normalize) is exact.
        """
        th, tw = self.image_size
        mode = self.preprocess_cfg.resize_mode
        if mode == "squash":
            return th, tw
        if mode == "shortest" and th == tw:
            # torchvision's Resize(int): short side to th, long side truncated (not rounded).
            short, long = min(height, width), max(height, width)
            new_long = int(th * long / short)
            return (th, new_long) if height <= width else (new_long, th)
        # open_clip's ResizeKeepRatio: scale by the shortest (or longest) side's ratio, rounded.
        ratios = (height / th, width / tw)
        ratio = max(ratios) if mode == "longest" else min(ratios)
        return round(height / ratio), round(width / ratio)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """open_clip's inference transform on a batch of uint8 frames.

        Args:
            frames: ``[N, 3, H, W]`` uint8 RGB, any size.

        Returns:
            ``[N, 3, h, w]`` float32 normalized images on the encoder's device,
            ``(h, w) = image_size``.
        """
        import torchvision.transforms.functional as TF
        from open_clip.transform import center_crop_or_pad

        x = frames.to(self.device, non_blocking=True)
        target = self.resize_size(*x.shape[-2:])
        if tuple(x.shape[-2:]) != target:
            bilinear = self.preprocess_cfg.interpolation == "bilinear"
            mode = TF.InterpolationMode.BILINEAR if bilinear else TF.InterpolationMode.BICUBIC
            # uint8 in, uint8 out (rounded), like the PIL image open_clip resizes.
            x = TF.resize(x, list(target), interpolation=mode, antialias=True)
        if tuple(x.shape[-2:]) != self.image_size:
            x = center_crop_or_pad(x, list(self.image_size), fill=self.preprocess_cfg.fill_color)
        return (x.float() / 255.0 - self._mean) / self._std

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeds a batch of frames.

        Args:
            frames: ``[N, 3, H, W]`` uint8 RGB, any size.

        Returns:
            ``(embeddings, tokens)``: ``[N, global_dim]`` image embeddings (the
            projected pooled token, not normalized, as ``model.encode_image``) and
            ``[N, num_patches, token_dim]`` patch tokens after the final layer norm;
            float32, on the encoder's device.
        """
        return self.embed(self.preprocess(frames))

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeds a batch of preprocessed images (:meth:`preprocess`; frames of several sizes, preprocessed apart, may be concatenated).

        On the CPU a frame's results do not depend on the batch it came in (its
        size, its other frames), so batches may span videos; on a GPU the kernels
        chosen by shape may change the last bits.

        Args:
            images: ``[N, 3, h, w]`` float32 normalized images, ``(h, w) = image_size``.

        Returns:
            ``(embeddings, tokens)`` as :meth:`encode` returns them.
        """
        with torch.inference_mode(), self._autocast():
            pooled, tokens = self.model(images)
            if self._proj is not None:
                # A GEMM's rows come out of kernels picked by its shape: a few rows take
                # another path than many. Every block has the same shape, padded with
                # zero rows, so an embedding does not depend on the batch it came in.
                pad = torch.nn.functional.pad
                pooled = torch.cat([(pad(b, (0, 0, 0, _PROJ_ROWS - len(b))) @ self._proj)[:len(b)]
                                    for b in pooled.split(_PROJ_ROWS)])
        return pooled.float(), tokens.float()

    def _autocast(self):
        if self.device.type != "cuda":
            # CPU autocast (bf16) is slower than fp32 on most CPUs and changes results.
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)


def load_encoder(spec: "str | VisualEncoder | None" = None, device=None,
                 activation: str | None = None) -> VisualEncoder:
    """Builds the visual encoder named by a spec (see the module docstring).

    Args:
        spec: ``NAME[:TAG]``, ``NAME:/path/to/checkpoint``, a folder in open_clip's
            format, ``hf-hub:org/repo``, ``tiny``, or None for ``ViT-B-32:openai``;
            a :class:`VisualEncoder` already loaded is returned as it is.
        device: Device to run on; None picks CUDA when available.
        activation: The activation an adapter's features were made with, when it
            differs from the one the weights were trained with (adapters written
            before the activation was recorded expect GELU for ``ViT-B-32:openai``):
            the encoder is built with it, with a warning. None: the weights' own.

    Returns:
        The encoder, frozen, in eval mode.

    Raises:
        ConfigError: Unknown model or tag, missing checkpoint, or weights that do
            not load (one line naming the spec).
    """
    import open_clip

    if isinstance(spec, VisualEncoder):
        return spec
    plan = resolve_encoder(spec, activation)
    device = default_device(device)
    if plan.activation != plan.trained_with and plan.trained_with is not None:
        warnings.warn(
            f"visual encoder {plan.spec!r}: built with {ACTIVATION_NAMES[plan.activation]} as the adapter's features "
            f"were, though its weights were trained with {ACTIVATION_NAMES[plan.trained_with]}; "
            f"retrain the adapter on {ACTIVATION_NAMES[plan.trained_with]} features", stacklevel=2)
    if plan.spec == TINY_SPEC:
        # Build on CPU under a fixed seed, leaving the caller's RNG state untouched.
        with seeded(TINY_SEED), _quiet_open_clip():
            model = open_clip.create_model(TINY_MODEL_NAME, **plan.create_kwargs())
    else:
        if plan.pretrained is None and not plan.model_name.startswith(("local-dir:", "hf-hub:")):
            warnings.warn(f"visual encoder {plan.spec!r}: no weights given, using random weights (use NAME:TAG)",
                          stacklevel=2)
        # Weights that are neither cached nor downloadable now: one line at once, not a
        # minute of download retries (generate, features, prepare and the demo all load here).
        check_weights_available(plan.spec)
        try:
            with _quiet_open_clip():
                if plan.openai_archive:
                    model = _load_openai_archive(plan)
                else:
                    model = open_clip.create_model(plan.model_name, pretrained=plan.pretrained, device="cpu",
                                                   **plan.create_kwargs())
        except ConfigError:
            raise
        except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError/HTTP errors
            raise ConfigError(f"visual encoder {plan.spec!r}: cannot build it ({one_line(exc)})") from None
    encoder = VisualEncoder(model.visual, plan.spec, plan.fingerprint, device)
    if plan.activation not in (None, encoder.activation):
        raise ConfigError(f"visual encoder {plan.spec!r}: built with {encoder.activation}, but its weights "
                          f"need {plan.activation}; name the activation in the spec (e.g. NAME-quickgelu:PATH)")
    return encoder


def encoder_fingerprint(spec: str | None, activation: str | None = None) -> str:
    """What identifies the features an encoder makes, without loading it (for the feature cache).

    The spec and the activation; with the size and mtime of the weight files for
    local checkpoints, so a replaced checkpoint is a different encoder. ``activation``
    as for :func:`load_encoder`.

    Raises:
        ConfigError: The spec is invalid.
    """
    return resolve_encoder(spec, activation).fingerprint


def _load_openai_archive(plan: EncoderPlan):
    """OpenAI's TorchScript archive through open_clip's OpenAI loader, checked against the named architecture.

    open_clip's ``create_model`` reads checkpoints with ``torch.load(weights_only=True)``,
    which cannot read an archive; its OpenAI loader rebuilds the model from the
    archive's state dict instead (as ``load_openai_model`` does in fp32).
    """
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    try:
        state_dict = torch.jit.load(plan.pretrained, map_location="cpu").state_dict()
        model = build_model_from_openai_state_dict(
            state_dict, quick_gelu=plan.activation == QUICK_GELU, cast_dtype=None).float()
    except Exception as exc:  # TorchScript errors, or keys that are not OpenAI's CLIP
        raise ConfigError(f"visual encoder {plan.spec!r}: not an OpenAI CLIP archive ({one_line(exc)})") from None
    name = plan.model_name.replace("/", "-")
    want, have = _vit_shape(open_clip.get_model_config(name)), _vit_shape(model)
    if want != have:
        raise ConfigError(f"visual encoder {plan.spec!r}: the archive holds a ViT of {_describe(have)}, {name} is one "
                          f"of {_describe(want)}; name the archive's architecture")
    return model


def _vit_shape(source) -> tuple:
    """(width, layers, patch, image size, embed dim) of a model config or a built CLIP."""
    if isinstance(source, dict):
        v = source.get("vision_cfg", {})
        patch, size = v.get("patch_size"), v.get("image_size", 224)
        first = [x if isinstance(x, int) or x is None else tuple(x)[0] for x in (patch, size)]
        return (v.get("width"), v.get("layers"), *first, source.get("embed_dim"))
    v = source.visual
    return (v.conv1.out_channels, len(v.transformer.resblocks), v.patch_size[0], v.image_size[0], v.output_dim)


def _describe(shape: tuple) -> str:
    width, layers, patch, size, embed = shape
    return f"width {width}, {layers} layers, {patch} px patches at {size} px, {embed}-d embeddings"


def _activation_of(visual: torch.nn.Module, name: str) -> str:
    """The MLP activation of a vision tower's blocks, from its modules."""
    from open_clip.transformer import QuickGELU

    kinds = {QUICK_GELU if isinstance(m, QuickGELU) else GELU
             for m in visual.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}
    if len(kinds) != 1:
        raise ConfigError(f"visual encoder {name!r}: cannot tell its MLP activation (found {sorted(kinds)}); "
                          "use an open_clip ViT")
    return kinds.pop()


@contextlib.contextmanager
def _quiet_open_clip():
    """Silences open_clip's logging and warnings while it builds a model.

    open_clip logs on the root logger ("initialized randomly" for the tiny encoder,
    the download error it then raises), which Python prints on stderr when logging
    is not configured, and warns with file and line (a QuickGELU mismatch with the
    pretrained tag, when an adapter asks for the other activation). Its failures
    reach the user as our one-line error, the activation as our own warning; and
    torch warns that ``torch.jit.load``, which OpenAI's format needs, is deprecated.
    Its module-level ``logging.info`` calls also configure the root logger when nothing
    has (``basicConfig``: a stderr handler), which would make the application's own
    later ``logging.basicConfig(...)`` do nothing: the root's handlers are put back.
    """
    previous, handlers = logging.root.manager.disable, list(logging.root.handlers)
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"open_clip(\.|$)")
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
            yield
    finally:
        logging.disable(previous)
        for handler in logging.root.handlers[:]:
            if handler not in handlers:
                logging.root.removeHandler(handler)
