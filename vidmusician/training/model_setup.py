"""The model a training run starts from: the backbone with its adapters, checked against the dataset.

:func:`build_model` loads the backbone in training precision, refuses data prepared
for another codec, encoder or frame rate, attaches fresh adapters (or loads the
recipe's ``init_adapter``) and sets the recipe's groups to train;
:func:`optimizer_groups` splits their parameters into those AdamW decays and the rest.
"""

from __future__ import annotations

from torch import nn

from ..adapter.layers import IdentityLinear
from ..backbones import backbone_spec, load_backbone
from ..errors import DataError, differing_fields, printable
from ..model import VidMusician, attach_adapters
from ..sizing import config_for_backbone
from ..video.encoder_specs import check_encoder_fit, rate_misfit
from ..video.reader import frames_covering
from .codec_identity import codec_identity
from .dataset import DatasetMeta
from .recipe import Recipe


def use_training_precision(musicgen) -> None:
    """Holds the frozen LM in float32 for training, whatever the loader chose.

    audiocraft's loader puts the LM in float16 on any non-CPU device, which suits
    generation. Training back-propagates through the whole frozen stack to reach
    the adapters of the early layers: float16 weights would round every gradient
    path and ignore ``--mixed-precision``. So the weights are float32 (as the
    adapters are) and Accelerate's autocast picks the compute precision: bf16 or
    fp16 matmuls with ``--mixed-precision bf16|fp16``, float32 with ``no``.
    Generation keeps audiocraft's float16 backbone on GPU.
    """
    musicgen.lm.float()


def fresh_config(musicgen, meta: DatasetMeta, recipe: Recipe):
    """The config of fresh adapters: the backbone's preset, the dataset's encoder, the recipe's overrides."""
    return config_for_backbone(
        musicgen, encoder=meta.encoder, global_dim=meta.global_dim, local_dim=meta.local_dim,
        global_fps=meta.global_fps, local_fps=meta.local_fps, encoder_activation=meta.encoder_activation,
        **recipe.adapter)


def check_codec(meta: DatasetMeta, name: str, codec, data) -> None:
    """Refuses codes made by another codec than the backbone's (datasets that recorded none: shapes only)."""
    if meta.codec_id is None:
        return
    found = codec_identity(name, codec)
    if found != meta.codec_id:
        raise DataError(f"{printable(data)}: its music was encoded by the codec of {meta.backbone!r}, not by that of "
                        f"backbone {name!r} ({meta.codec_id} vs {found}); prepare the data again with "
                        f"--backbone {name}, into a new folder")


def trained_window(before: float | None, window: float, trains_memory: bool = True) -> float | None:
    """Seconds of memory positions trained after a run on ``window``-second windows from an
    adapter trained to ``before`` (None: a fresh adapter, or one that predates the record).
    A run that leaves the semantic group frozen (``trains_memory`` False: stage 2) trains no
    memory position, and so leaves ``before`` as it was."""
    if not trains_memory:
        return before
    return window if before is None else max(before, window)


def build_model(args, recipe: Recipe, meta: DatasetMeta, device, longest: float | None = None):
    """The backbone with adapters (fresh, or from ``init_adapter``), set to train the recipe's groups.

    ``longest``: seconds of the longest window the run trains on (None: the dataset's ``--window``;
    clips shorter than it give shorter windows), recorded as the adapter's ``trained_window``.
    """
    musicgen = load_backbone(meta.backbone_to_load(args.data, args.backbone), device=device)
    use_training_precision(musicgen)
    spec = backbone_spec(musicgen)
    diffs = differing_fields(meta, spec, ("frame_rate", "n_q", "card", "sample_rate"), ("data", "backbone"))
    if diffs:
        raise DataError(f"{args.data}: prepared with the codec of {meta.backbone!r}, which does not match "
                        f"backbone {spec.name!r} ({diffs}); prepare the data with --backbone {spec.name}")
    check_codec(meta, spec.name, musicgen.compression_model, args.data)
    init = args.init or recipe.init_adapter
    if init:
        vm = VidMusician.from_pretrained(init, backbone=musicgen)  # another backbone than init's: a warning
        # The release records the backbone this run trains it on, which generation then loads by default.
        vm.config = vm.config.replace(backbone=spec.name)
    else:
        vm = attach_adapters(musicgen, fresh_config(musicgen, meta, recipe))
    c = vm.config
    check_encoder_fit(c, str(args.data), meta.encoder, meta.encoder_activation, (meta.global_dim, meta.local_dim),
                      error=DataError, same_spec=True, fix=f"prepare it with --encoder {c.encoder}, or train a fresh adapter on it")
    misfit = rate_misfit(c, dict(global_fps={meta.global_fps}, local_fps={meta.local_fps}))
    if misfit:
        field, want, words = misfit
        raise DataError(f"{args.data}: prepared with {words}; prepare it with --{field.replace('_', '-')} {want:g}, "
                        f"or train a fresh adapter on it")
    if frames_covering(meta.window, meta.global_fps) > c.max_global_tokens:
        raise DataError(f"{args.data}: {meta.window:g} s windows exceed the adapter's {c.max_global_tokens} global tokens")
    vm.set_stage(recipe.stage)
    if recipe.trainable is not None:
        vm.set_trainable(recipe.trainable)
    # The memory positions trained so far: this run's windows', or an init adapter's where longer (a
    # run on shorter windows leaves the positions past them as they were; one that does not train the
    # semantic group, whose memory holds them, leaves them all). Generation warns when a longer
    # window's memory reads positions past them.
    trains_memory = "semantic" in vm.trainable_groups
    window = meta.window if longest is None else longest
    vm.config = vm.config.replace(trained_window=trained_window(c.trained_window, window, trains_memory))
    vm.train()
    if recipe.gradient_checkpointing:
        vm.enable_gradient_checkpointing()
    return vm


def optimizer_groups(vm, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: the trainable weights of linear maps decay; the rest does not.

    Chosen by module structure: the ``weight`` of each ``nn.Linear`` in the LM
    (LoRA's A and B are ones too) decays; biases, norms and the learned
    positions do not. A position table is a matrix, but decay would pull every
    second's position toward zero, toward one another. Nor does the full weight
    of an :class:`~vidmusician.adapter.layers.IdentityLinear` (``rhythm_rank: null``):
    it starts at the identity, and decay toward zero would shrink the rhythm signal
    each layer passes on (the low-rank form decays its update, which starts at zero).

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``.
    """
    identities = {id(m.linear.weight) for m in vm.lm.modules() if isinstance(m, IdentityLinear) and m.rank is None}
    matrices = {id(m.weight) for m in vm.lm.modules() if isinstance(m, nn.Linear)} - identities
    params = vm.trainable_parameters()
    return [{"params": [p for p in params if id(p) in matrices], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in matrices], "weight_decay": 0.0}]
