"""The :class:`VidMusician` object: a MusicGen with video adapters attached.

The model object assembles the layers below it: the adapters wired into the LM
(:mod:`vidmusician.adapter.wiring`), the adapter folder's files
(:mod:`vidmusician.adapter_files`) and generation (:mod:`vidmusician.generation`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch

from .adapter.context import VideoBatch, VideoContext
from .adapter.wiring import adapter_modules, unwired_on_error, wire_adapters
from .adapter_files import check_finite, read_adapter, write_adapter
from .backbones import load_backbone, missing_folder, other_backbone
from .config import GROUP_NAMES, STAGE_GROUPS, AdapterConfig, check_stage
from .sizing import config_for_backbone
from .errors import AdapterError, ConfigError
from .generation.guidance import DEFAULT_PLAUSIBILITY, GenerationParams
from .hub import resolve_adapter, save_and_push
from .video.encoder_specs import check_batch_fit
from .runtime import seeded
from .generation.windows import generate_batch


def attach_adapters(musicgen, config: AdapterConfig | None = None) -> "VidMusician":
    """Attaches video adapters to a MusicGen in place and returns a :class:`VidMusician`.

    Every backbone parameter is frozen; the adapters start so that the model's
    output equals the base model's exactly. An error leaves the MusicGen as it was.

    Args:
        musicgen: an audiocraft ``MusicGen`` (pretrained, tiny or random).
        config: adapter config (left as it is: the model holds a copy sized to the backbone);
            default: :func:`~vidmusician.sizing.config_for_backbone`.

    Raises:
        AdapterError: the config does not fit the backbone (width, depth, frame rate).
        BackboneError: adapters are already attached to it, or it is no MusicGen they support.
    """
    if config is None:
        config = config_for_backbone(musicgen)
    context, hook, config = wire_adapters(musicgen, config)
    with unwired_on_error(musicgen):
        vm = VidMusician(musicgen, config, context, hook)
        vm.set_stage(config.stage)
    return vm


def load_adapter(directory, backbone=None, device=None, revision: str | None = None) -> "VidMusician":
    """Loads a saved adapter onto a backbone (also :meth:`VidMusician.from_pretrained`).

    Load once, then call :meth:`VidMusician.generate` as often as needed: a backbone holds one set of adapters.

    Args:
        directory: adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, or a
            path to either file), or a Hugging Face Hub id (``org/name``, ``org/name@revision``)
            whose two files are fetched into the Hugging Face cache; a folder that exists wins.
        backbone: a loaded MusicGen (the adapters are attached to it in place), or a name/path
            for :func:`~vidmusician.backbones.load_backbone` (default: the backbone named in
            the adapter's config).
        device: device for a backbone loaded here.
        revision: branch, tag or commit of a Hub id.

    Returns:
        The :class:`VidMusician`, in eval mode.

    Raises:
        AdapterError: the folder is missing, damaged, holds NaN weights (a diverged training),
            or does not fit the backbone, or its backbone is a folder not on this machine and
            ``backbone`` is not given. Any error leaves a given backbone as it was, so the
            same backbone can take another adapter.
        ConfigError: the adapter needs a T5 text encoder that the backbone lacks, or another one.

    A backbone other than the one the adapter records (the same shape, other weights) is taken
    with a warning naming both.
    """
    config, state = read_adapter(resolve_adapter(directory, revision))
    check_finite(state, directory)  # before the backbone changes: what can be checked without it
    if backbone is None and missing_folder(config.backbone):  # trained on a folder of another machine
        raise AdapterError(f"{directory}: trained on the backbone folder {config.backbone}, which is not on this "
                           f"machine; pass that MusicGen: --backbone NAME_OR_FOLDER (backbone= in Python)")
    if backbone is None or isinstance(backbone, (str, os.PathLike)):
        backbone = load_backbone(backbone or config.backbone, device=device)
    try:
        # The fresh adapters' random initial weights, which the file's replace, do not move the caller's stream.
        with seeded(0, next(backbone.lm.parameters()).device):
            vm = attach_adapters(backbone, config)
    except (AdapterError, ConfigError) as exc:  # the same error, naming the adapter
        raise (AdapterError if isinstance(exc, AdapterError) else ConfigError)(f"{directory}: {exc}") from None
    with unwired_on_error(backbone):  # a file that does not fit leaves the caller's backbone as it was
        vm.load_adapter_state_dict(state, source=str(directory))
        vm.eval()
    if other_backbone(config.backbone, getattr(backbone, "name", None)):
        # The same shape loads without an error, but the adapters learned another LM's activations.
        warnings.warn(f"{directory}: the adapter was trained on backbone {config.backbone}; running it on "
                      f"{backbone.name}, whose weights may differ (the music may not follow the video as it "
                      f"did in training)", stacklevel=2)
    return vm


class VidMusician:
    """A frozen MusicGen plus trainable video adapters.

    Made by :func:`vidmusician.attach_adapters` or :meth:`from_pretrained`.

    Attributes:
        musicgen: the audiocraft MusicGen (its LM now holds the adapters).
        config: the :class:`AdapterConfig`.
        context: the video the next forward is conditioned on.
    """

    def __init__(self, musicgen, config: AdapterConfig, context: VideoContext, hook):
        self.musicgen = musicgen
        self.config = config
        self.context = context
        self._hook = hook
        self.trainable_groups: tuple[str, ...] = ()
        self.generation_params = None  # a GenerationParams; None: audiocraft's defaults
        self.encoder = None  # VisualEncoder for video files; loaded from config.encoder on first use

    @property
    def lm(self):
        return self.musicgen.lm

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    # -- video ---------------------------------------------------------------

    def make_batch(self, videos, num_frames: int | None = None) -> VideoBatch | None:
        """A :class:`VideoBatch` on the model's device from features (``None`` entries: null video)."""
        if videos is None:
            return None
        encoders = local_rates = None  # the specs that made the features, their local rates: where known
        if not isinstance(videos, VideoBatch):
            features = list(videos)
            videos = VideoBatch.from_features(features, self.config.frame_rate, num_frames,
                                              self.config.global_dim, self.config.local_dim)
            encoders = {f.encoder for f in features if f is not None}  # checked as features by from_features
            local_rates = {f.local_fps for f in features if f is not None}
        check_batch_fit(self.config, videos, encoders, local_rates)
        return videos.to(self.device)

    def set_video(self, videos: VideoBatch | Sequence | None, frame_offset: int = 0,
                  frames: int | None = None) -> None:
        """Conditions the following forwards on ``videos`` (one per sample, ``None`` = null).

        Args:
            videos: a :class:`VideoBatch`, a list of ``VideoFeatures``/``None``, or
                ``None`` to run the base model.
            frame_offset: codec frame of the video that sequence step 0 corresponds to.
            frames: the codec frames the forwards cover (a generation window): the
                semantic adapters see the video of that stretch only. None: as much as
                their memory holds (``config.max_global_tokens`` global frames).

        The video stays where it is set: audiocraft's own ``MusicGen.generate`` past its
        window (``max_duration``) starts later windows without moving it, so their music
        would follow the video's start again. :meth:`generate` moves it with every window.
        """
        self.context.set(self.make_batch(videos), frame_offset, frames=frames)

    @contextlib.contextmanager
    def video(self, videos, frame_offset: int = 0, frames: int | None = None):
        """``with vm.video(features): ...``: sets the video, and clears it on exit."""
        self.set_video(videos, frame_offset, frames)
        try:
            yield self
        finally:
            self.context.set(None)

    # -- training state ------------------------------------------------------

    def set_stage(self, stage: int) -> None:
        """Selects what trains: the stage's groups in :data:`~vidmusician.config.STAGE_GROUPS`."""
        check_stage(stage, "set_stage")
        self.config = self.config.replace(stage=stage)  # a copy: the caller's config stays as given
        self.set_trainable(STAGE_GROUPS[stage])

    def set_trainable(self, groups: Sequence[str]) -> None:
        """Makes exactly the adapter groups in ``groups`` trainable ('semantic', 'rhythm')."""
        unknown = sorted(set(groups) - set(GROUP_NAMES))
        if unknown:
            raise ConfigError(f"unknown adapter groups {unknown}; choose from {list(GROUP_NAMES)}")
        for group, modules in adapter_modules(self.lm).items():
            for module in modules.values():
                module.requires_grad_(group in groups)
        self.trainable_groups = tuple(g for g in GROUP_NAMES if g in groups)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.lm.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: per adapter group, trainable now, and the frozen backbone."""
        counts = {group: sum(p.numel() for m in mods.values() for p in m.parameters())
                  for group, mods in adapter_modules(self.lm).items()}
        adapter = sum(counts.values())
        total = sum(p.numel() for p in self.lm.parameters())
        counts.update(adapters=adapter, trainable=sum(p.numel() for p in self.trainable_parameters()),
                      backbone=total - adapter)
        return counts

    def print_trainable_parameters(self) -> None:
        """Prints trainable / total LM parameters, like peft's."""
        c = self.parameter_counts()
        total = c["adapters"] + c["backbone"]
        print(f"trainable params: {c['trainable']:,} || all params: {total:,} || "
              f"trainable%: {100 * c['trainable'] / total:.4f}")

    def train(self, mode: bool = True) -> "VidMusician":
        """Puts the adapters in training mode; the frozen backbone always stays in eval mode."""
        self.lm.eval()
        for mods in adapter_modules(self.lm).values():
            for module in mods.values():
                module.train(mode)
        return self

    def eval(self) -> "VidMusician":
        return self.train(False)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recomputes the frozen base layers in backward instead of storing activations."""
        # The wrappers checkpoint only their base layer; audiocraft's own
        # per-layer checkpointing would also re-run the adapters.
        self.lm.transformer.checkpointing = "none"
        for layer in self.lm.video_inputs.layers.values():
            layer.gradient_checkpointing = enabled

    @contextlib.contextmanager
    def disable_adapters(self):
        """``with vm.disable_adapters(): ...`` runs the base MusicGen, without a second copy.

        Every adapted layer's own base layer is put back into the transformer for the
        block, so the model computes exactly what the base model computes (the video,
        if set, is ignored); the adapters come back on exit, trained weights and all.
        Streaming state lives in the base layers, so a block may also start or end
        mid-generation. Meant for inference: inside the block the adapted layers'
        parameters are not part of ``lm.parameters()``; the adapters' shared inputs
        (``lm.video_inputs``: the visual memory and the rhythm input) stay, unused.
        """
        layers = self.lm.transformer.layers
        adapted = self.lm.video_inputs.layers
        if any(layers[i] is not layer for i, layer in adapted.items()):
            raise ConfigError("the adapters are already disabled (disable_adapters() blocks do not nest)")
        for i, layer in adapted.items():
            layers[i] = layer.base_layer
        try:
            yield self
        finally:
            for i, layer in adapted.items():
                layers[i] = layer

    # -- files ---------------------------------------------------------------

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors only, keyed relative to the LM."""
        out = {}
        for mods in adapter_modules(self.lm).values():
            for prefix, module in mods.items():
                for key, value in module.state_dict().items():
                    out[f"{prefix}.{key}"] = value
        return out

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Copies adapter tensors into the model; missing keys or shape mismatches are errors, extra keys warn."""
        own = self.adapter_state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise AdapterError(f"{source}: missing {len(missing)} adapter tensors (first: {missing[0]}); "
                               f"the file does not match its adapter_config.json")
        unknown = sorted(set(state) - set(own))
        if unknown:
            warnings.warn(f"{source}: ignoring {len(unknown)} unknown tensors (first: {unknown[0]}); "
                          f"written by a newer vidmusician?")
        bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            raise AdapterError(f"{source}: tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                               f"expected {tuple(own[bad[0]].shape)}")
        check_finite({k: state[k] for k in own}, source)
        with torch.no_grad():
            for key, target in own.items():
                target.copy_(state[key].to(target.dtype))

    def save_pretrained(self, directory) -> Path:
        """Writes ``adapter_config.json`` + ``adapter_model.safetensors`` (adapters only)."""
        return write_adapter(directory, self.config, self.adapter_state_dict())

    @classmethod
    def from_pretrained(cls, directory, backbone=None, device=None, revision: str | None = None) -> "VidMusician":
        """Loads an adapter folder or a Hub adapter onto a backbone (:func:`load_adapter`).

        Args:
            directory: adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``,
                or a path to either file), or a Hub id (``org/name``, ``org/name@revision``);
                a folder that exists wins.
            backbone: a loaded MusicGen, or a name/path for :func:`load_backbone`
                (default: the backbone named in the config).
            device: device for a backbone loaded here.
            revision: branch, tag or commit of a Hub id.
        """
        return load_adapter(directory, backbone=backbone, device=device, revision=revision)

    def push_to_hub(self, repo_id: str, private: bool | None = None, revision: str | None = None,
                    report=None, commit_message: str | None = None, token: str | None = None,
                    license: str = "cc-by-nc-4.0", run=None) -> str:
        """Uploads the adapters (safetensors + config, never the backbone) with a model card.

        See :func:`vidmusician.hub.push_adapter` for the arguments; ``run`` is the
        training run folder whose record (recipe, steps, data) goes into the card.

        Returns:
            The URL of the commit.
        """
        return save_and_push(self, repo_id, private=private, revision=revision, report=report,
                             commit_message=commit_message, token=token, license=license, run=run)

    # -- forward -------------------------------------------------------------

    def compute_predictions(self, codes: torch.Tensor, videos=None, conditions=None, frame_offset: int = 0,
                            condition_tensors=None):
        """``lm.compute_predictions`` with the video set: returns audiocraft's LMOutput.

        Args:
            codes: [B, K, T] codec codes.
            videos: one ``VideoFeatures``/``None`` per sample, or a ``VideoBatch``.
            conditions: audiocraft ConditioningAttributes (default: null text).
            frame_offset: codec frame of the video that codes[..., 0] corresponds to.
            condition_tensors: the conditions already encoded (``lm.condition_provider``'s
                output), for forwards that share them; ``conditions`` is then not read.
        """
        from audiocraft.modules.conditioners import ConditioningAttributes

        if condition_tensors is not None:
            conditions = []
        elif conditions is None:
            conditions = [ConditioningAttributes(text={"description": None}) for _ in range(codes.shape[0])]
        with self.video(videos, frame_offset):
            return self.lm.compute_predictions(codes, conditions, condition_tensors)

    # -- generation ----------------------------------------------------------
    # Thin over vidmusician.generation.windows.

    @property
    def sample_rate(self) -> int:
        return int(self.musicgen.sample_rate)

    def set_generation_params(self, use_sampling: bool = True, top_k: int = 250, top_p: float = 0.0,
                              temperature: float = 1.0, cfg_coef: float = 3.0, extend_stride: float | None = None,
                              two_step_cfg: bool = False, text_cfg_coef: float | None = None,
                              video_cfg_coef: float | None = None,
                              plausibility: float = DEFAULT_PLAUSIBILITY, engine: str = "fast") -> None:
        """Sets the sampling parameters of :meth:`generate` (MusicGen's names and defaults).

        Guidance: ``logits = null + t * (text - null) + v * (text_video - text)``.

        Args:
            use_sampling: sample (True) or take the argmax.
            top_k: top-k sampling (0: off).
            top_p: nucleus sampling mass (0: use top_k).
            temperature: softmax temperature.
            cfg_coef: classifier-free guidance coefficient of text and video together
                (``t = v``, MusicGen's two-branch batch); the default of the two below.
                Each of the three is in ``[0, 10]``; outside, a ConfigError.
            extend_stride: seconds between windows beyond the backbone's window;
                None: 0.6 of the window (audiocraft's 18 s of 30 s).
            two_step_cfg: refused (ConfigError): the adapters could not tell the
                unconditional pass apart.
            text_cfg_coef: ``t``, guidance of the text alone; None: ``cfg_coef``.
            video_cfg_coef: ``v``, guidance of the video on top of the text; None:
                ``cfg_coef``. With ``v != t`` (and ``v != 0``) every step runs a third,
                text-only branch: up to 1.5x the time. 0: plain MusicGen with the text.
            plausibility: guidance ranks only the tokens the conditional branch finds
                plausible (probability at least this fraction of its top token's); 0:
                every token, MusicGen's guidance (see docs/alignment.md).
            engine: 'fast' (the static-cache decode engine where it applies) or
                'reference' (audiocraft's streaming forward).
        """
        self.generation_params = GenerationParams(
            use_sampling=use_sampling, top_k=top_k, top_p=top_p, temperature=temperature, cfg_coef=cfg_coef,
            text_cfg_coef=text_cfg_coef, video_cfg_coef=video_cfg_coef, extend_stride=extend_stride,
            two_step_cfg=two_step_cfg, plausibility=plausibility, engine=engine)

    def generate(self, videos, texts=None, duration: float | None = None, seed: int | None = None,
                 progress: bool = False, return_tokens: bool = False, *, on_step=None):
        """Music for a batch of videos; see :func:`vidmusician.generation.windows.generate_batch`.

        Args:
            videos: list of video files, ``VideoFeatures`` or None (no video), or a ``VideoBatch``.
            texts: list of text prompts (or None), one per video.
            duration: seconds; default: the longest video.
            seed: same seed, same music.
            progress: progress bars.
            return_tokens: also return the codes.
            on_step: called after every sampling step as ``on_step(done, total)``:
                steps done so far, steps of the whole generation (all windows). An
                exception raised in it stops the generation and propagates (to cancel).

        Returns:
            ``[B, channels, samples]`` float audio at :attr:`sample_rate`.
        """
        return generate_batch(self, videos, texts, duration=duration, seed=seed, progress=progress,
                              return_tokens=return_tokens, on_step=on_step)
