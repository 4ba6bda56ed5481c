"""Wiring the adapters into audiocraft's LM, without touching audiocraft's classes.

Each adapted ``lm.transformer.layers[i]`` is replaced by an :class:`AdaptedLayer`
that owns the base layer (``base_layer``) and its adapters, adds the adapter
delta to the hidden states, then calls the base layer unchanged. The shared
inputs (visual memory projection, Zero-Linear O, and the in-attention chain,
which depends only on the video) live in ``lm.video_inputs``.
The video reaches the layers through a :class:`~vidmusician.adapter.context.VideoContext`
prepared by a forward pre-hook on ``lm.transformer`` before every forward.
Shapes use the letters of :mod:`vidmusician.adapter.layers`. This module knows nothing of the
model object: :func:`vidmusician.model.attach_adapters` assembles a
:class:`~vidmusician.model.VidMusician` around what it wires.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from audiocraft.modules.streaming import StreamingModule

from ..backbone_spec import backbone_spec, check_fuser
from ..config import GROUP_NAMES, AdapterConfig
from ..errors import AdapterError, BackboneError, ConfigError, differing_fields
from ..sizing import sized_to_t5
from .audiocraft_internals import is_streaming, streaming_position, streaming_state
from .build import layer_adapters, rhythm_input, semantic_encoder
from .context import VideoContext
from .layers import FoldedMemory, IdentityLinear, SemanticCrossAttention
from .parameter_counts import count_adapter_parameters  # noqa: F401  (its old home)
from .t5 import text_conditioner


# Generation steps whose in-attention states are computed at once (see VideoInputs).
RHYTHM_CHUNK = 64


@dataclass
class RhythmCache:
    """In-attention states computed ahead while streaming, for codec frames ``[start, stop)``.

    Attributes:
        window_id: the :class:`VideoContext` window they were computed for.
        start: first codec frame covered.
        stop: codec frame past the last one covered.
        states: ``[r_1, r_2, ...]``, each [n, stop - start, d].
    """

    window_id: int
    start: int
    stop: int
    states: list[torch.Tensor]

    def covers(self, window_id: int, start: int, steps: int) -> bool:
        """Whether the states hold codec frames ``[start, start + steps)`` of window ``window_id``."""
        return window_id == self.window_id and self.start <= start and start + steps <= self.stop

    def slice(self, start: int, steps: int) -> list[torch.Tensor]:
        """``[r_1, r_2, ...]`` of codec frames ``[start, start + steps)``, each [n, steps, d]."""
        first = start - self.start
        return [r[:, first:first + steps] for r in self.states]


class VideoInputs(StreamingModule):
    """Adapter parts shared by all layers: the visual memory and the in-attention chain.

    The chain ``r_j = L_j(r_{j-1})``, ``r_0 = O(local)`` reads only the video, not
    the hidden states, so all its layers are computed together for a forward's
    steps; while streaming, for :data:`RHYTHM_CHUNK` steps ahead, so that a
    generation step only slices them.
    """

    def __init__(self, config: AdapterConfig, text_conditioner=None):
        super().__init__()
        self.memory = semantic_encoder(config, text_conditioner)
        self.rhythm_in = rhythm_input(config)
        # Plain attributes (the modules are registered, and saved, under their layers):
        # the layers' IdentityLinear modules in chain order, and the adapted layers by
        # index, which stay reachable while VidMusician.disable_adapters() takes them out.
        self.__dict__["chain"] = []
        self.__dict__["layers"] = {}

    def rhythm_states(self, ctx: VideoContext) -> list[torch.Tensor]:
        """[r_1, r_2, ...] for the forward's steps, each [n, s, d]."""
        start, steps = ctx.frame_offset + ctx.position, ctx.steps
        if not is_streaming(self):
            return self._run_chain(ctx.local(start, steps, self.rhythm_in.lags))
        cache = streaming_state(self).get("rhythm")
        if cache is None or not cache.covers(ctx.window_id, start, steps):
            stop = start + max(steps, RHYTHM_CHUNK)
            states = self._run_chain(ctx.local(start, stop - start, self.rhythm_in.lags))
            cache = RhythmCache(ctx.window_id, start, stop, states)
            streaming_state(self)["rhythm"] = cache
        return cache.slice(start, steps)

    def _run_chain(self, local: torch.Tensor) -> list[torch.Tensor]:
        """local [n, s, p] -> [r_1, r_2, ...], each [n, s, d]: ``r_0 = O(local)``, ``r_j = L_j(r_{j-1})``."""
        ref = self.rhythm_in.proj.weight
        r = self.rhythm_in(local.to(ref.device, ref.dtype))
        states = []
        for linear in self.chain:
            r = linear(r)
            states.append(r)
        return states


class AdaptedLayer(StreamingModule):
    """A transformer layer with its video adapters; the base layer runs unchanged.

    ``x = x + r_j`` (in-attention) then ``x = x + CrossAttn(norm(x), M)`` (semantic)
    for the rows that carry video, then ``base_layer(x)``.
    """

    def __init__(self, base_layer: nn.Module, index: int, context: VideoContext,
                 semantic: SemanticCrossAttention | None, rhythm: IdentityLinear | None, rhythm_slot: int | None):
        super().__init__()
        self.base_layer = base_layer
        self.index = index
        self.semantic = semantic
        self.rhythm = rhythm
        self.rhythm_slot = rhythm_slot  # position of this layer in the in-attention chain
        self.gradient_checkpointing = False
        # A plain attribute (not a submodule): shared, owned by the VidMusician.
        self.__dict__["context"] = context

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # Inference past the first layer: x is the previous layer's fresh output and no
        # autograd graph holds it, so its rows are updated in place (the first layer's
        # input belongs to the transformer's caller).
        writable = self.index > 0 and not torch.is_grad_enabled()
        x = self.context.apply_to_video_rows(x, self._adapt, writable)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            # Only the frozen base layer is recomputed in backward; the adapters,
            # which read shared per-forward state, run once.
            return checkpoint(self.base_layer, x, *args, use_reentrant=False, **kwargs)
        return self.base_layer(x, *args, **kwargs)

    def _adapt(self, x: torch.Tensor, in_place: bool) -> torch.Tensor:
        """Video rows [n, s, d] -> ``x + r_j``, then ``+ CrossAttn(norm(.), M)``.

        With ``in_place`` the result is written into ``x`` where the dtypes allow.
        """
        # Submodules read from _modules: this runs for every adapted layer at every
        # generation step, and each nn.Module attribute lookup costs about a microsecond.
        modules = self._modules  # a module set to None is not in it
        semantic, rhythm = modules.get("semantic"), modules.get("rhythm")
        # Adapters keep fp32 weights on a half-precision backbone; autocast still applies.
        dtype = (semantic if semantic is not None else rhythm).dtype
        y = x if x.dtype == dtype else x.to(dtype)
        in_place = in_place and y is x
        if rhythm is not None:
            r = self.context.rhythm(self.rhythm_slot)
            y = y.add_(r) if in_place else y + r
        if semantic is not None:
            y = semantic(y, self._semantic_window(semantic), in_place=in_place)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _semantic_window(self, semantic: SemanticCrossAttention) -> FoldedMemory:
        # The memory is constant over a window, and so is what the cross-attention folds
        # from it: while streaming it is kept in the streaming state (reset by
        # audiocraft's streaming()) until the context's window changes.
        ctx = self.context
        state, streaming = streaming_state(self), is_streaming(self)
        if streaming and state.get("window_id") == ctx.window_id:
            return state["semantic"]
        folded = semantic.prepare(ctx.memory(), *ctx.memory_mask())
        if streaming:
            state["window_id"], state["semantic"] = ctx.window_id, folded
        return folded


def _check_supported(musicgen):
    lm = getattr(musicgen, "lm", None)
    if lm is None or not hasattr(lm, "transformer"):
        raise BackboneError("expected an audiocraft MusicGen (with .lm.transformer)")
    if getattr(lm, "fuser", None) is not None:
        check_fuser(musicgen.name, lm.fuser.fuse2cond)
    if hasattr(lm, "video_inputs"):  # wire_adapters adds it
        raise BackboneError(f"{musicgen.name}: adapters are already attached to this model; to generate "
                            f"many times, load once (vm = VidMusician.from_pretrained(adapter, backbone=...)) "
                            f"and call vm.generate, or pass a fresh backbone")


def wire_adapters(musicgen, config: AdapterConfig) -> tuple[VideoContext, object, AdapterConfig]:
    """Wires video adapters into a MusicGen's LM in place; the model object is assembled on top.

    Every backbone parameter is frozen and the LM put in eval mode; the adapters
    start so that the LM's output equals the base model's exactly. A failure leaves the
    MusicGen as it was; :func:`unwire_adapters` takes the adapters out again.

    Args:
        musicgen: an audiocraft ``MusicGen`` (pretrained, tiny or random).
        config: the adapter config (checked against the backbone by :func:`check_fit`).

    Returns:
        ``(context, hook, config)``: the :class:`VideoContext` every adapted layer reads, the
        handle of the forward pre-hook on ``lm.transformer`` that prepares it, and the config
        sized to the backbone (a copy with the backbone's T5 when ``config.t5`` was unset;
        the given config is never changed).
    """
    _check_supported(musicgen)
    lm = musicgen.lm
    check_fit(config, musicgen)
    config = sized_to_t5(config, musicgen)
    text_conditioner = _text_conditioner(config, musicgen)
    before = BaseState.of(lm)
    try:
        context, hook = _wire(musicgen, config, text_conditioner, before)
    except BaseException:
        _restore(lm, before)  # a failure part way leaves the backbone as it was given
        raise
    return context, hook, config


def _wire(musicgen, config: AdapterConfig, text_conditioner, before: "BaseState"):
    """:func:`wire_adapters`' changes to the LM, recorded in ``before`` as they are made."""
    lm = musicgen.lm
    for p in lm.parameters():
        p.requires_grad_(False)
    lm.eval()

    ref = next(lm.parameters())
    context = VideoContext(config.max_global_tokens)
    inputs = VideoInputs(config, text_conditioner).to(ref.device)
    inputs.__dict__["before"] = before  # what unwire_adapters puts back
    lm.add_module("video_inputs", inputs)
    layers = lm.transformer.layers
    for i in sorted(set(config.semantic_layers) | set(config.rhythm_layers)):
        semantic, rhythm = (m.to(ref.device) if m is not None else None for m in layer_adapters(config, i))
        slot = None
        if rhythm is not None:
            slot = len(inputs.chain)
            inputs.chain.append(rhythm)
        layers[i] = inputs.layers[i] = AdaptedLayer(layers[i], i, context, semantic, rhythm, slot)

    def begin_forward(transformer, args, kwargs):
        x = args[0] if args else kwargs["x"]
        if context.batch is not None and (lm.two_step_cfg or musicgen.generation_params.get("two_step_cfg")):
            # two-step CFG runs cond and uncond as separate batches of the same size,
            # so the null video cannot be routed to the unconditional pass.
            raise ConfigError("two_step_cfg is not supported with video adapters; "
                              "call set_generation_params(two_step_cfg=False)")
        context.begin_forward(x.shape[0], streaming_position(transformer), x.shape[1], x.device, inputs)

    before.hook = lm.transformer.register_forward_pre_hook(begin_forward, with_kwargs=True)
    return context, before.hook


@dataclass
class BaseState:
    """What :func:`wire_adapters` changes in an LM besides the modules it adds, as it was before.

    Attributes:
        requires_grad: every LM parameter with its ``requires_grad`` (wiring freezes them all).
        training: every LM module with its ``training`` flag (wiring puts the LM in eval mode).
        hook: the forward pre-hook wiring registered on ``lm.transformer`` (None until then).
    """

    requires_grad: list[tuple[nn.Parameter, bool]]
    training: list[tuple[nn.Module, bool]]
    hook: object = None

    @classmethod
    def of(cls, lm) -> "BaseState":
        return cls([(p, p.requires_grad) for p in lm.parameters()], [(m, m.training) for m in lm.modules()])


def unwire_adapters(musicgen) -> None:
    """Takes :func:`wire_adapters`' adapters back out of a MusicGen, leaving it as it was before.

    The base layers go back into the transformer, ``lm.video_inputs`` and the forward
    pre-hook go, and every LM parameter and module gets back its ``requires_grad`` and
    training mode. For a load that fails after wiring: the caller's backbone can be
    loaded onto again.
    """
    lm = musicgen.lm
    inputs = lm._modules.get("video_inputs")
    if not isinstance(inputs, VideoInputs):
        raise BackboneError(f"{musicgen.name}: no adapters are attached to this model")
    _restore(lm, inputs.before)


@contextlib.contextmanager
def unwired_on_error(musicgen):
    """``with unwired_on_error(musicgen): ...`` takes the adapters just wired back out when the block raises."""
    try:
        yield
    except BaseException:
        unwire_adapters(musicgen)
        raise


def _restore(lm, before: BaseState) -> None:
    layers = lm.transformer.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, AdaptedLayer):
            layers[i] = layer.base_layer
    lm._modules.pop("video_inputs", None)
    if before.hook is not None:
        before.hook.remove()
    for p, flag in before.requires_grad:
        p.requires_grad_(flag)
    for m, mode in before.training:
        m.training = mode


def _text_conditioner(config: AdapterConfig, musicgen):
    """The backbone's T5 conditioner when the config runs the video through it (None otherwise)."""
    return text_conditioner(musicgen) if config.semantic_encoder == "t5-lora" else None


def check_fit(config: AdapterConfig, musicgen) -> None:
    """The one check that an adapter config fits a backbone: width, depth and codec frame rate.

    Raises:
        AdapterError: naming each value that differs.
    """
    spec = backbone_spec(musicgen)
    diffs = differing_fields(config, spec, ("dim", "num_layers", "frame_rate"), ("adapter", "backbone"))
    if diffs:
        fix = (f"use backbone {config.backbone!r}" if config.backbone != spec.name else
               f"load the {spec.name!r} the adapter was made for (this one has another shape)")
        raise AdapterError(f"adapter made for {config.backbone!r} does not match backbone {spec.name!r} ({diffs}); "
                           f"{fix}, or size a config with vidmusician.sizing.config_for_backbone")


def adapter_modules(lm) -> dict[str, dict[str, nn.Module]]:
    """Adapter submodules of an adapted LM by group: {group: {path relative to the LM: module}}."""
    out: dict[str, dict[str, nn.Module]] = {g: {} for g in GROUP_NAMES}
    inputs = lm.video_inputs
    out["semantic"]["video_inputs.memory"] = inputs.memory
    if inputs.rhythm_in is not None:
        out["rhythm"]["video_inputs.rhythm_in"] = inputs.rhythm_in
    for i, layer in inputs.layers.items():
        for group in ("semantic", "rhythm"):
            module = getattr(layer, group)
            if module is not None:
                out[group][f"transformer.layers.{i}.{group}"] = module
    return out
