"""A training stage as data: the recipe (``recipes/*.json``), its checks, and its learning-rate schedule."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..checks import MAX_COUNT, json_object, number
from ..config import GROUP_NAMES, AdapterConfig, check_stage
from ..errors import ConfigError, unknown_keys

__all__ = ["FORMER_VALUES", "RESUME_SAFE", "Recipe", "Resumed", "check_init_adapter", "check_resume", "lr_factor",
           "lr_warning", "schedule_change", "schedule_warning"]

# The highest learning rate at which the adapters train without inflating the frozen
# model's hidden states, measured on the 'tiny-learned' backbone (recipes/README.md,
# "Learning rate"): where the unscaled adapter output starts to blow up, minus a margin.
MAX_SAFE_LR = 3e-2

# The shipped recipes: recipes/ of a checkout, which the package holds once installed (a link
# in the source tree), so `--recipe stage1_semantic` names one from anywhere.
SHIPPED_RECIPES = Path(__file__).parents[1] / "recipes"


def recipe_file(path) -> Path:
    """The recipe file ``path`` names: itself where it is a file; else, for a bare name
    ('stage1_semantic', 'stage1_semantic.json': no folder in it, not even './'), the shipped recipe
    of that name, if any. A folder of that name (a run's, say) does not hide it."""
    given = Path(path)
    if given.is_file() or "/" in str(path) or os.sep in str(path):
        return given
    shipped = SHIPPED_RECIPES / (given.name if given.suffix == ".json" else f"{given.name}.json")
    return shipped if shipped.is_file() else given


def _no_recipe(path, what: str) -> ConfigError:
    names = ", ".join(sorted(p.stem for p in SHIPPED_RECIPES.glob("*.json")))
    return ConfigError(f"{path}: {what}; pass a recipe file (JSON), or the name of a shipped one: {names}")


@dataclass
class Recipe:
    """A training stage, as data (``recipes/*.json``); ``--set key=value`` overrides any field.

    Attributes:
        stage: 1 trains the semantic adapter, 2 the rhythmic one (on a stage-1 adapter); see
            :data:`~vidmusician.config.STAGE_GROUPS`.
        trainable: adapter groups to train instead of the stage's; None (the default): the stage's.
        init_adapter: adapter folder or Hub id to start from (stage 2: the stage-1 release); None: fresh adapters.
        adapter: overrides of :class:`~vidmusician.config.AdapterConfig` for fresh adapters.
        batch_size: windows per process per micro-batch.
        grad_accum: micro-batches per optimizer step (global batch = batch_size x processes x grad_accum).
        max_steps, lr, min_lr, warmup_steps, weight_decay, betas, grad_clip: AdamW with linear
            warmup then cosine decay to ``min_lr`` at ``max_steps``.
        gradient_checkpointing: recompute the frozen backbone's activations in backward.
        eval_every, eval_windows: holdout loss every N steps, on at most this many windows.
        save_every, keep_checkpoints: checkpoint every N steps, keep the newest few.
        log_every: print and log the training loss (every target) and objective every N steps.
        seed: adapter initialization and data order.
        num_workers: DataLoader worker processes.
        codebook_weights: weight of each codebook's mean cross-entropy in the training loss
            (normalized to sum to 1); None: equal weights, MusicGen's loss. The holdout loss
            stays the plain mean.
        plausible_targets: in every codebook but the first, a target token counts zero in the
            loss when its probability under the frozen base (the model without the video, same
            text) is below this fraction of the base's most likely token's: the fine codes a
            lossy soundtrack (AAC, noise) rewrote, which the adapters would otherwise learn and
            guidance amplify (docs/alignment.md). Costs one more forward pass, without
            gradients, per step. 0: every target, MusicGen's loss. The holdout loss counts
            every target.
        text_dropout: the probability that a training window's text is left out (MusicGen's own
            rate, 0.1), for the conditioning and the plausible-targets base alike, so that the
            adapters also learn the video without text: what generation without a prompt, and
            the text-free branches of guidance, use. Each window's draw follows from the seed,
            the global batch and its place in it: the same on resume and for any process count.
            0: every window keeps its text (what runs made before this field did).
    """

    stage: int = 1
    trainable: list[str] | None = None
    init_adapter: str | None = None
    adapter: dict = field(default_factory=dict)
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 10000
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 500
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    gradient_checkpointing: bool = True
    eval_every: int = 500
    eval_windows: int = 512
    save_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 20
    seed: int = 1234
    num_workers: int = 2
    codebook_weights: list[float] | None = None
    plausible_targets: float = 1e-3
    text_dropout: float = 0.1

    def __post_init__(self):
        self.check()

    def check(self, source: str = "recipe") -> None:
        """Refuses values no one meant (``batch_size=0``, ``lr=-1``, a string for a number), in one line."""

        ints = dict(batch_size=1, grad_accum=1, max_steps=1, warmup_steps=0, eval_every=1, eval_windows=1,
                    save_every=1, keep_checkpoints=1, log_every=1, seed=0, num_workers=0)
        for name, low in ints.items():
            number(name, getattr(self, name), integer=True, low=low, high=MAX_COUNT, source=source)
        number("lr", self.lr, low=0, high=1, low_open=True, source=source)
        number("min_lr", self.min_lr, low=0, high=self.lr, source=source)
        number("weight_decay", self.weight_decay, low=0, high=1, source=source)
        number("grad_clip", self.grad_clip, low=0, source=source)
        number("plausible_targets", self.plausible_targets, low=0, high=1, source=source)
        number("text_dropout", self.text_dropout, low=0, high=1, source=source)
        check_stage(self.stage, source)
        if not (isinstance(self.betas, (list, tuple)) and len(self.betas) == 2):
            raise ConfigError(f"{source}: betas must be two numbers in [0, 1), e.g. [0.9, 0.95], got {self.betas!r}")
        for beta in self.betas:
            number("betas", beta, low=0, high=0.999999, source=source)
        if self.trainable is not None and (not isinstance(self.trainable, list)
                                           or not set(self.trainable) <= set(GROUP_NAMES)):
            raise ConfigError(f"{source}: trainable must be a list of {list(GROUP_NAMES)}, got {self.trainable!r}")
        if not isinstance(self.adapter, dict):
            raise ConfigError(f"{source}: adapter must be an object of adapter config fields, got {self.adapter!r}")
        check_adapter_overrides(self.adapter, source)
        if self.codebook_weights is not None:
            if not isinstance(self.codebook_weights, list) or not self.codebook_weights:
                raise ConfigError(f"{source}: codebook_weights must be a list of numbers, one per codebook, "
                                  f"got {self.codebook_weights!r}")
            for w in self.codebook_weights:
                number("codebook_weights", w, low=0, source=source)
            if not sum(self.codebook_weights) > 0:
                raise ConfigError(f"{source}: codebook_weights must not all be 0, got {self.codebook_weights!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(f"{source}: gradient_checkpointing must be true or false, "
                              f"got {self.gradient_checkpointing!r}")

    @classmethod
    def load(cls, path, overrides: list[str] = ()) -> "Recipe":
        try:
            data = json_object(json.loads(recipe_file(path).read_text()), str(path))
        except FileNotFoundError:
            raise _no_recipe(path, "no such recipe") from None
        except IsADirectoryError:
            raise _no_recipe(path, "a folder, not a recipe file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            reason = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not text"
            raise ConfigError(f"{path}: not valid JSON ({reason})") from None
        data.pop("description", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: {unknown_keys('recipe', unknown, known)}")
        if isinstance(data.get("adapter"), dict):  # the file's own adapter keys, said naming the file alone
            check_adapter_overrides(data["adapter"], str(path))
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. max_steps=2000)")
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # a bare string
            *parents, leaf = key.split(".")
            # A mistyped key is said naming the --set it came from, not the recipe file.
            if key.split(".")[0] not in known:
                raise ConfigError(f"--set {key}: {unknown_keys('recipe', [key.split('.')[0]], known, named=False)}")
            if parents == ["adapter"] and leaf not in {f.name for f in dataclasses.fields(AdapterConfig)}:
                check_adapter_overrides({leaf: value}, f"--set {key}", named=False)
            target = data
            for p in parents:
                target = target.setdefault(p, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"--set {item!r}: {p} is not an object")
            target[leaf] = value
        try:
            return cls(**data)
        except ConfigError as exc:  # name the file (and the --set) rather than "recipe"
            where = f"{path}{' with --set ' + ' '.join(overrides) if overrides else ''}"
            raise ConfigError(f"{where}: {str(exc).removeprefix('recipe: ')}") from None


# Adapter fields a recipe cannot set, by who sets them, and what to do instead: the trainer takes
# the backbone's shape and codec rate, the dataset's visual encoder and rates (a recipe value would
# disagree with what the adapters are trained on), and records the windows training saw.
NOT_IN_RECIPES = {
    "come from the backbone (pass --backbone for another)":
        ("backbone", "dim", "num_layers", "frame_rate"),
    "come from the dataset (prepare the data again for another encoder or rate)":
        ("encoder", "encoder_activation", "global_dim", "local_dim", "global_fps", "local_fps"),
    "are recorded by training from the dataset's windows (prepare --window sets them)": ("trained_window",),
    "are written by vidmusician": ("version",),
}


def check_adapter_overrides(adapter: dict, source: str = "recipe", named: bool = True) -> None:
    """Refuses recipe ``adapter`` keys that are no adapter config field, or that the backbone and dataset set.

    ``named``: False where ``source`` names the one key (``--set adapter.rnak``)."""
    fields = {f.name for f in dataclasses.fields(AdapterConfig)}
    unknown = sorted(set(adapter) - fields)
    if unknown:
        settable = fields.difference(*NOT_IN_RECIPES.values())
        raise ConfigError(f"{source}: {unknown_keys('adapter config', unknown, settable, named)}")
    said = [f"adapter fields {fixed} {why}" for why, keys in NOT_IN_RECIPES.items()
            if (fixed := sorted(set(adapter) & set(keys)))]
    if said:
        raise ConfigError(f"{source}: {'; '.join(said)}; leave them out of the recipe")


def check_init_adapter(init: str | None, from_recipe: bool) -> None:
    """A start adapter that is neither a folder here nor a Hub id: one line naming where it was
    set and the fix, before the backbone loads (stage 2 run before stage 1 wrote its adapter)."""
    from ..hub import is_hub_id

    if init is None or is_hub_id(init) or Path(init).exists():
        return
    if from_recipe:
        raise ConfigError(f"{init}: adapter folder not found (the recipe's init_adapter); train stage 1 first (its "
                          f"--output's adapter/), or pass --init DIR")
    raise ConfigError(f"{init}: adapter folder not found (--init); pass a stage-1 run's OUTPUT/adapter or a Hub id")


# The fields a resumed run may change: how long it runs, when it logs, evaluates and saves, and
# how it loads data and spends memory. Only max_steps changes a step's numbers: the cosine
# schedule stretches to the new end, so the learning rate from the resumed step on is the new
# schedule's (the trainer prints it, before and after). The others change none: evaluation
# draws on no training RNG (its loader has its own generator, samples fork theirs), workers
# feed the same batches (the data path draws no random numbers), checkpointing recomputes the
# frozen layers exactly. Any other field (lr, betas, batch_size, seed, ...) would make the
# optimizer's saved state, the data order or the schedule disagree with the recipe.
RESUME_SAFE = ("max_steps", "log_every", "eval_every", "eval_windows", "save_every", "keep_checkpoints",
               "num_workers", "gradient_checkpointing")

# Fields added after runs had trained without them, with the value those runs trained with
# (not today's default): a run's recipe.json that lacks one trained with this value.
FORMER_VALUES = {"text_dropout": 0.0}


class Resumed(NamedTuple):
    """What :func:`check_resume` found: the recipe to resume with, and how the run's differs."""

    recipe: Recipe  # the given one, with the fields of FORMER_VALUES the run's recipe.json lacks set to them
    former: tuple[str, ...] = ()  # those fields: recipe.json is written again without them
    max_steps: int | None = None  # the run's max_steps (None: no recipe.json)


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resume(recipe: Recipe, run: Path) -> Resumed:
    """Refuses to resume ``run`` with a recipe that differs from its ``recipe.json`` outside :data:`RESUME_SAFE`.

    A run folder without ``recipe.json`` is not checked; a field the file lacks (written
    before the field existed) counts as its default, or as its value in :data:`FORMER_VALUES`
    for a field whose default is not what the run trained with: a recipe that leaves such a
    field at its default resumes with the run's value, one that sets another is refused. A
    field the file has that recipes no longer have is ignored.

    Returns:
        The recipe to resume with, the fields it took from :data:`FORMER_VALUES`, the run's max_steps.

    Raises:
        ConfigError: naming each differing field (old -> new) and the fix, in one line.
    """
    path = Path(run) / "recipe.json"
    if not path.is_file():
        return Resumed(recipe)
    try:
        saved = json_object(json.loads(path.read_text()), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not valid JSON; restore it from the recipe the run was made with, "
                          f"or start a new --output") from None
    known = {f.name for f in dataclasses.fields(Recipe)}
    absent = {k: v for k, v in FORMER_VALUES.items() if k not in saved}
    former = tuple(k for k in absent if getattr(recipe, k) == getattr(Recipe(), k))
    recipe = dataclasses.replace(recipe, **{k: absent[k] for k in former})
    old = _flat(dict(dataclasses.asdict(Recipe()), **absent, **{k: v for k, v in saved.items() if k in known}))
    new = _flat(dataclasses.asdict(recipe))
    changed = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in sorted(set(old) | set(new))
               if k not in RESUME_SAFE and old.get(k) != new.get(k)]
    if changed:
        raise ConfigError(f"{run}: --resume with a recipe unlike the run's ({'; '.join(changed)}); a resumed run "
                          f"may change only {', '.join(RESUME_SAFE)}: resume with the run's values "
                          f"({path.name}), or train with the new ones into a new --output")
    return Resumed(recipe, former, old["max_steps"])


def schedule_change(max_steps: int | None, r: Recipe, step: int) -> str | None:
    """What a run resumed at ``step`` with another max_steps prints: the lr before and after (None: the same).

    The cosine schedule ends at max_steps, so a longer run has a higher learning rate at the
    same step: from the resumed step on the run follows the new schedule.
    """
    if max_steps is None or max_steps == r.max_steps:
        return None
    before = r.lr * lr_factor(step, dataclasses.replace(r, max_steps=max_steps))
    return (f"max_steps {max_steps} -> {r.max_steps}: the learning rate follows the new schedule "
            f"({before:.2g} -> {r.lr * lr_factor(step, r):.2g} at step {step})")


def schedule_warning(r: Recipe) -> str | None:
    """Why a recipe's schedule never reaches its learning rate, or None when it does."""
    if r.warmup_steps < r.max_steps:
        return None
    peak = r.lr * lr_factor(r.max_steps - 1, r)
    return (f"warmup_steps {r.warmup_steps} >= max_steps {r.max_steps}: the learning rate peaks at {peak:.2g}, "
            f"never reaching lr {r.lr:g}; set warmup_steps below max_steps (e.g. --set warmup_steps="
            f"{max(1, r.max_steps // 10)})")


def lr_warning(r: Recipe) -> str | None:
    """Why a recipe's learning rate is above the measured safe range (:data:`MAX_SAFE_LR`), or None."""
    if r.lr <= MAX_SAFE_LR:
        return None
    return (f"lr {r.lr:g} is above {MAX_SAFE_LR:g}, where the adapters' output can inflate the frozen model's "
            f"hidden states until the loss stalls (recipes/README.md, Learning rate); lower it (--set lr=...)")


def lr_factor(step: int, r: Recipe) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warmup, then cosine to min_lr."""
    if step < r.warmup_steps:
        return (step + 1) / (r.warmup_steps + 1)
    progress = min(1.0, (step - r.warmup_steps) / max(1, r.max_steps - r.warmup_steps))
    floor = r.min_lr / r.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
