"""Adapter configuration: a dataclass saved as sorted JSON (``adapter_config.json``).

A leaf of the package, like peft's ``LoraConfig``: it knows no model and imports
no backbone, adapter or audiocraft code. Sizing a config to a loaded MusicGen and
the shipped presets are :mod:`vidmusician.sizing`'s, above it. A config is never
changed in place once made: :meth:`AdapterConfig.replace` returns a changed copy.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .checks import MAX_COUNT, number
from .errors import ConfigError, one_line
from .video.encoder_specs import legacy_activation

# An adapter folder's two files (see vidmusician.adapter_files).
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def adapter_folder(path) -> Path:
    """The adapter folder a path names: a folder as it is, and either of an adapter folder's
    files (``adapter_config.json``, ``adapter_model.safetensors``) for the folder that holds it.

    Every reader of adapter folders (loading, ``info``, ``generate --adapter``, ``push``)
    goes through here, so each takes the same paths.
    """
    path = Path(path)
    if path.name in (CONFIG_NAME, WEIGHTS_NAME) and path.is_file():
        return path.parent
    return path


# What the adapters need to know of a T5 encoder: the shapes the LoRA layers take
# (``d_model``, ``num_heads * d_kv``, one set per block) and the width of its inputs.
T5_ARCH_KEYS = ("d_model", "d_kv", "num_heads", "num_layers")

# The adapter groups: each adapter module belongs to one (see vidmusician.adapter.wiring.adapter_modules).
GROUP_NAMES = ("semantic", "rhythm")
# What each training stage trains, by adapter group: the one table that a stage,
# an adapter config's `stage` and a recipe's `stage` mean. Stage 2 trains the
# rhythmic adapter on top of a trained stage-1 semantic adapter, which stays as
# stage 1 left it. A recipe's `trainable` may name other groups for one run.
STAGE_GROUPS = {1: ("semantic",), 2: ("rhythm",)}


def check_stage(stage, source: str = "adapter config") -> None:
    """Refuses a stage that :data:`STAGE_GROUPS` does not list (one line naming ``source``)."""
    if isinstance(stage, bool) or stage not in STAGE_GROUPS:
        *others, last = sorted(STAGE_GROUPS)
        choices = f"{', '.join(map(str, others))} or {last}" if others else str(last)
        raise ConfigError(f"{source}: stage must be {choices}, got {stage!r}")


@dataclass
class AdapterConfig:
    """Everything needed to rebuild the adapters and to check they fit a backbone.

    Attributes:
        backbone: backbone name the adapter was made for (e.g. 'facebook/musicgen-small').
        dim: backbone LM width.
        num_layers: backbone LM layer count.
        frame_rate: the codec frame rate (tokens per second) the local features are resampled to.
        semantic_layers: indices of layers that get the semantic cross-attention.
        rhythm_layers: indices of layers that get in-attention (a contiguous chain is typical).
        global_dim: visual global embedding width (CLIP image embedding).
        local_dim: local feature width (patch count of the encoder's patch grid).
        memory_dim: width of the projected visual memory.
        attn_dim: inner width of each semantic cross-attention.
        attn_heads: heads of each semantic cross-attention.
        max_global_tokens: global tokens attended at once (window seconds x global_fps);
            also the length of the learned temporal position embedding.
        trained_window: seconds of video one training window held (the dataset's
            ``prepare --window``), set by training when it saves the adapter. Positions of the
            temporal embedding past ``trained_window x global_fps`` were never trained, so
            generation warns when a window's memory reads them. None: not trained, or
            written before the field existed.
        rhythm_rank: None for full-width identity-initialized in-attention linears,
            or the rank of their trainable update (identity + low-rank).
        rhythm_context: earlier local frames the rhythm input (the Zero-Linear O) reads
            beside the current one: at each codec frame it sees the change signal now
            and ``1 / local_fps``, ``2 / local_fps``, ... seconds before (rounded to whole
            codec frames; before the video starts, its first frame), so it can tell a change that
            begins from one that ends (a flash's second edge) or goes on (motion). 0 is
            the paper's per-frame map. An adapter folder written before the field
            existed loads as 0, what those versions built.
        rhythm_compression: the rhythm input reads ``log(1 + change / rhythm_compression)``
            instead of the change itself: a flash that changes every patch a little and one
            that changes them a lot both stand far above motion, where the raw signal
            differs threefold between them and a linear input follows only the strong
            one. None reads the raw signal (the paper's; what adapter folders written
            before the field existed load as).
        encoder: visual encoder spec ('ViT-B-32:openai', 'tiny', ...).
        encoder_activation: MLP activation of the encoder that made the training
            features, 'quick_gelu' or 'gelu'; features made with another are refused.
            None: the encoder's own (QuickGELU for 'ViT-B-32:openai'). An adapter
            folder written before it was recorded loads with what those versions
            built: open_clip's config for the architecture, the pretrained tag ignored
            (GELU for 'ViT-B-32:openai'; see vidmusician.video.encoder_specs.legacy_activation).
        global_fps: frames per second of the global features.
        local_fps: frames per second of the local change signal before resampling.
        stage: the training stage (:data:`STAGE_GROUPS` says what it trains: 1 the
            semantic adapter, 2 the rhythmic one).
        semantic_encoder: how global tokens become the memory: 'linear' (LayerNorm +
            Linear + learned positions) or 't5-lora' (the paper's: an embedding manager
            into the backbone's own T5 encoder with LoRA, then a projector; see
            :mod:`vidmusician.adapter.semantic`). A config without the key (written before the
            choice existed) is 'linear'.
        lora_rank: rank of the T5's LoRA ('t5-lora').
        lora_alpha: LoRA alpha (the update is scaled by alpha / rank).
        t5: the backbone's T5 encoder shapes ({d_model, d_kv, num_heads, num_layers}),
            which size the LoRA and the embedding manager; filled in from the backbone
            ('t5-lora' only).
        version: vidmusician version that wrote the config.
    """

    backbone: str = "facebook/musicgen-small"
    dim: int = 1024
    num_layers: int = 24
    frame_rate: float = 50.0
    semantic_layers: list[int] | None = None
    rhythm_layers: list[int] | None = None
    global_dim: int = 512
    local_dim: int = 49
    memory_dim: int = 512
    attn_dim: int = 128
    attn_heads: int = 4
    max_global_tokens: int = 30
    # None, not a guess: an adapter that predates the field says nothing about its windows.
    trained_window: float | None = None
    rhythm_rank: int | None = 64
    rhythm_context: int = 2
    rhythm_compression: float | None = 0.01
    encoder: str = "ViT-B-32:openai"
    encoder_activation: str | None = None
    global_fps: float = 1.0
    local_fps: float = 25.0
    stage: int = 2
    # The default stays 'linear' so that a config without the key (an adapter saved
    # before the choice existed) means what it meant; the presets choose 't5-lora'.
    semantic_encoder: str = "linear"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    t5: dict | None = None
    version: str = field(default_factory=lambda: __version__)
    # Read from a file (not a field): rules added since the file was written warn instead of refusing,
    # so an adapter someone trained keeps loading.
    saved: dataclasses.InitVar[bool] = False

    def __post_init__(self, saved: bool = False):
        self._saved = saved  # not a field: neither saved to JSON nor compared
        self._check_numbers()
        # Defaults follow the paper: cross-attention in every layer, in-attention
        # in the first three quarters of the stack (rhythm is a low-level cue).
        if self.semantic_layers is None:
            self.semantic_layers = list(range(self.num_layers))
        if self.rhythm_layers is None:
            self.rhythm_layers = list(range((3 * self.num_layers) // 4))
        self.semantic_layers = sorted(int(i) for i in self.semantic_layers)
        self.rhythm_layers = sorted(int(i) for i in self.rhythm_layers)
        for name in ("semantic_layers", "rhythm_layers"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.num_layers]
            if bad:
                raise ConfigError(f"{name} {bad} out of range for a {self.num_layers}-layer backbone")
        if self.attn_dim % self.attn_heads:
            raise ConfigError(f"attn_dim {self.attn_dim} is not divisible by attn_heads {self.attn_heads}")
        check_stage(self.stage)
        if self.semantic_encoder not in SEMANTIC_ENCODERS:
            raise ConfigError(f"semantic_encoder {self.semantic_encoder!r} is not one of "
                              f"{', '.join(map(repr, SEMANTIC_ENCODERS))}")
        if self.rhythm_rank is not None and not low_rank_is_smaller(self.rhythm_rank, self.dim):
            # x + up(down(x)) has 2 * rank * dim weights: from rank dim/2 on, more than a full linear.
            message = (f"rhythm_rank {self.rhythm_rank} is not low rank for width {self.dim} "
                       f"(use a rank below {self.dim // 2 + self.dim % 2}, or null for a full-width linear)")
            if not saved:
                raise ConfigError(message)
            warnings.warn(f"{message}; kept as saved, new adapters refuse it")

    def _check_numbers(self) -> None:
        """Every number in range before anything divides by it or allocates with it (one line)."""
        for name in ("dim", "num_layers", "global_dim", "local_dim", "memory_dim", "attn_dim", "attn_heads",
                     "max_global_tokens"):
            number(name, getattr(self, name), integer=True, low=1, high=MAX_COUNT, source="adapter config")
        for name in ("frame_rate", "global_fps", "local_fps"):
            number(name, getattr(self, name), low=0, high=1000, low_open=True, source="adapter config")
        number("lora_rank", self.lora_rank, integer=True, low=1, high=MAX_COUNT, source="adapter config")
        number("lora_alpha", self.lora_alpha, low=0, high=1e6, low_open=True, source="adapter config")
        if self.t5 is not None:
            self.t5 = check_t5_architecture(self.t5)
        number("rhythm_context", self.rhythm_context, integer=True, low=0, high=MAX_RHYTHM_CONTEXT,
               source="adapter config")
        if self.trained_window is not None:
            number("trained_window", self.trained_window, low=0, high=MAX_COUNT, low_open=True,
                   source="adapter config")
        if self.rhythm_compression is not None:
            number("rhythm_compression", self.rhythm_compression, low=0, high=1e6, low_open=True,
                   source="adapter config")
        if self.rhythm_rank is not None:
            number("rhythm_rank", self.rhythm_rank, integer=True, low=1, high=MAX_COUNT, source="adapter config")
        for name in ("semantic_layers", "rhythm_layers"):
            layers = getattr(self, name)
            if layers is not None and (not isinstance(layers, list)
                                       or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
                raise ConfigError(f"adapter config: {name} must be a list of layer indices, got {layers!r}")
        for name in ("backbone", "encoder", "semantic_encoder"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"adapter config: {name} must be a string, got {getattr(self, name)!r}")

    @property
    def rhythm_lags(self) -> tuple[int, ...]:
        """Codec frames back from the current one that the rhythm input reads, current first.

        One local frame is ``frame_rate / local_fps`` codec frames (2 at 50 Hz and 25 fps),
        rounded and at least one.
        """
        step = max(1, round(self.frame_rate / self.local_fps))
        return tuple(j * step for j in range(self.rhythm_context + 1))

    @classmethod
    def for_backbone(cls, musicgen, **overrides) -> "AdapterConfig":
        """A config sized to a loaded MusicGen: :func:`vidmusician.sizing.config_for_backbone` (its old name)."""
        from .sizing import config_for_backbone  # sizing sits above the config: a documented alias

        return config_for_backbone(musicgen, **overrides)

    def replace(self, **changes) -> "AdapterConfig":
        """A copy with ``changes``, checked as a new config is; this one is left as it is.

        A config read from a file stays one (rules added since it was written warn, once,
        when it is read).
        """
        with warnings.catch_warnings():
            if self._saved:
                warnings.simplefilter("ignore")  # already said when the file was read
            return dataclasses.replace(self, saved=self._saved, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            # A newer vidmusician may add fields; old code can still use the rest.
            warnings.warn(f"{source}: ignoring unknown adapter config keys {unknown} (written by a newer vidmusician?)")
        try:
            return cls(**{k: v for k, v in data.items() if k in known}, saved=True)
        except TypeError as exc:
            raise ConfigError(f"{source}: invalid adapter config ({one_line(exc)})") from None
        except ConfigError as exc:  # name the file rather than "adapter config"
            raise ConfigError(f"{source}: {str(exc).removeprefix('adapter config: ')}") from None

    def save(self, path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path) -> "AdapterConfig":
        path = adapter_folder(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if path.suffix == ".safetensors":
            raise ConfigError(f"{path}: a weights file; give its adapter folder (it holds {CONFIG_NAME} too)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            run_adapter = path.parent / "adapter"  # a training run folder given for its release adapter
            hint = (f" (this is a training run: its adapter is {run_adapter})"
                    if (run_adapter / CONFIG_NAME).is_file() else "")
            raise ConfigError(f"{path}: no such file; an adapter folder holds {CONFIG_NAME}{hint}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8 JSON") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        if path.name == CONFIG_NAME and "encoder_activation" not in data:
            # A trained adapter from before the activation was recorded: its features
            # were made with the activation of the architecture's open_clip config.
            data["encoder_activation"] = legacy_activation(data.get("encoder", cls.encoder))
        if path.name == CONFIG_NAME:
            # A trained adapter from before the rhythm input's fields: it read the raw current frame only.
            data.setdefault("rhythm_context", 0)
            data.setdefault("rhythm_compression", None)
        return cls.from_dict(data, source=str(path))


def describe_memory(config: AdapterConfig) -> str:
    """The semantic memory in words (``vidmusician info``, the model card): its width, its tokens and,
    where recorded, the training windows that trained its positions."""
    trained = f", trained on {config.trained_window:g} s windows" if config.trained_window is not None else ""
    return f"memory {config.memory_dim}-d, {config.max_global_tokens} tokens{trained}"


def describe_rhythm_input(config: AdapterConfig) -> str:
    """What the rhythm input reads, in words (``vidmusician info``, model cards)."""
    frames = ("the current local frame only" if not config.rhythm_context
              else f"the current local frame and the {config.rhythm_context} before it")
    signal = ("raw" if config.rhythm_compression is None
              else f"log(1 + change / {config.rhythm_compression:g})")
    return f"input: {frames}, {signal}"


SEMANTIC_ENCODERS = ("linear", "t5-lora")
MAX_RHYTHM_CONTEXT = 100  # earlier local frames the rhythm input may read (4 s at 25 fps)


def low_rank_is_smaller(rank: int, dim: int) -> bool:
    """Whether an identity + rank-``rank`` update has fewer weights than a full ``dim x dim`` linear."""
    return 2 * rank < dim


def check_t5_architecture(arch, source: str = "adapter config") -> dict[str, int]:
    """Validates a T5 architecture dict (from a config file): the four positive integers of :data:`T5_ARCH_KEYS`."""
    if not isinstance(arch, dict) or sorted(arch) != sorted(T5_ARCH_KEYS):
        raise ConfigError(f"{source}: t5 must be an object with keys {', '.join(T5_ARCH_KEYS)}, got {arch!r}")
    for key in T5_ARCH_KEYS:
        number(f"t5.{key}", arch[key], integer=True, low=1, high=MAX_COUNT, source=source)
    return {key: int(arch[key]) for key in T5_ARCH_KEYS}


# Names this module had before presets and sizing moved to vidmusician.sizing; they stay importable.
_MOVED_TO_SIZING = ("PRESET_DIR", "preset_names", "load_preset", "preset_for", "backbone_t5")


def __getattr__(name: str):
    if name in _MOVED_TO_SIZING:
        from . import sizing  # above the config: a documented alias, read on first use only

        return getattr(sizing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
