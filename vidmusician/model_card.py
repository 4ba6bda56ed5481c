"""The model card of an adapter pushed to the Hub (``huggingface_hub``'s ModelCard).

Everything on the card is read from what the project wrote: ``adapter_config.json``,
the training run's record around the adapter folder (``RUN/adapter`` beside
``RUN/recipe.json``, ``RUN/log.jsonl`` and ``RUN/run.json``; stage 2's
``init_adapter`` leads to stage 1's run) and, when given, an eval report (the JSON
of ``vidmusician eval --output``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .adapter.parameter_counts import count_adapter_parameters
from .config import STAGE_GROUPS, AdapterConfig, adapter_folder, describe_memory, describe_rhythm_input
from .errors import ConfigError
from .hub_reach import BUILT_BACKBONES, is_local_name

__all__ = ["adapter_card", "base_model_id", "training_record", "MUSICGEN_LICENSE"]

TAGS = ["vidmusician", "video-to-music", "music-generation", "musicgen", "audiocraft", "adapter"]
MUSICGEN_LICENSE = "cc-by-nc-4.0"  # MusicGen's weights (audiocraft's code is MIT)
# Recipe fields worth a reader's time, in the order shown.
RECIPE_FIELDS = ("max_steps", "batch_size", "grad_accum", "lr", "min_lr", "warmup_steps", "weight_decay", "seed")


def base_model_id(name: str) -> str | None:
    """The backbone's Hub id for the card's ``base_model`` (the Hub checks that it names a
    repository): None for a backbone built by name or a local folder, which are named in the
    text only. A folder is recorded by its absolute path (:func:`~vidmusician.backbones.load_backbone`),
    never in the form of a Hub id."""
    return None if shown_backbone(name)[1] or name in BUILT_BACKBONES else name


def shown_backbone(name: str) -> tuple[str, bool]:
    """The backbone as a public card names it, and whether it is a local folder (named by its
    last part only: a card names no local folder, and no one else can load it by that path)."""
    if name in BUILT_BACKBONES or not is_local_name(name):
        return name, False
    return Path(name).name or name, True


def adapter_card(folder, config: AdapterConfig, repo_id: str, report=None, run=None,
                 license: str = MUSICGEN_LICENSE, backbone_parameters: int | None = None,
                 base_model: str | None = None, revision: str | None = None):
    """The card of an adapter folder about to be pushed as ``repo_id``.

    Args:
        folder: the adapter folder.
        config: its config.
        repo_id: the Hub id it is pushed to (for the usage snippet).
        report: an eval report file (``vidmusician eval --output``), or None.
        run: the training run folder; default: the one above ``folder``, if any.
        license: the license id in the metadata.
        backbone_parameters: the frozen backbone's parameter count, when known.
        base_model: the backbone's Hub id for the metadata (the Hub checks it names a
            repository); None for a backbone that is not on the Hub ('tiny', a folder).
        revision: the branch it is pushed to, when not main: the usage loads ``repo_id@revision``.

    Returns:
        A ``huggingface_hub.ModelCard``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="vidmusician", base_model=base_model, license=license, tags=list(TAGS))
    stages = training_record(Path(folder), run)
    sections = [_model_section(config, repo_id, backbone_parameters), _training_section(stages, config),
                _eval_section(report), _usage_section(repo_id if revision is None else f"{repo_id}@{revision}",
                                                      config.backbone), _license_section(license)]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _model_section(c: AdapterConfig, repo_id: str, backbone_parameters: int | None) -> str:
    from .video.encoder_specs import ACTIVATION_NAMES, natural_activation

    counts = count_adapter_parameters(c)
    activation = c.encoder_activation or natural_activation(c.encoder)
    if c.semantic_encoder == "t5-lora":
        t5 = c.t5 or {}
        semantic = (f"t5-lora: embedding manager -> the backbone's T5 ({t5.get('num_layers')} blocks, "
                    f"{t5.get('d_model')}-d) with LoRA rank {c.lora_rank}, alpha {c.lora_alpha:g} -> projector")
    else:
        semantic = "linear: LayerNorm + Linear + learned positions"
    rank = "full width" if c.rhythm_rank is None else f"rank {c.rhythm_rank}"
    frozen = f"; the backbone's {backbone_parameters:,} stay frozen" if backbone_parameters else ""
    backbone, local = shown_backbone(c.backbone)
    where = "a local checkpoint in audiocraft's format, " if local else ""
    rows = [
        ("backbone", f"`{backbone}` ({where}frozen, not in this repository): width {c.dim}, {c.num_layers} layers, "
                     f"{c.frame_rate:g} Hz codec"),
        ("visual encoder", f"`{c.encoder}` ({ACTIVATION_NAMES.get(activation, activation or 'activation unknown')}): "
                           f"global {c.global_dim}-d at {c.global_fps:g} fps, local {c.local_dim}-d at "
                           f"{c.local_fps:g} fps"),
        ("semantic encoder", semantic),
        ("semantic adapter", f"zero-initialized cross-attention in {len(c.semantic_layers)} layers (width "
                             f"{c.attn_dim}, {c.attn_heads} heads, {describe_memory(c)})"),
        ("rhythmic adapter", f"identity-initialized in-attention in {len(c.rhythm_layers)} layers ({rank}), "
                             f"{describe_rhythm_input(c)}"),
        ("stage", f"{c.stage} (trains the {' and '.join(STAGE_GROUPS[c.stage])} adapter)"),
        ("parameters", f"{counts['total']:,} in the adapters (semantic {counts['semantic']:,}, "
                       f"rhythm {counts['rhythm']:,}){frozen}"),
        ("written by", f"vidmusician {c.version}"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"# {repo_id}\n\n"
            f"A vidmusician adapter: it turns the frozen MusicGen "
            f"`{backbone}` into a video-to-music model. Global visual features reach the backbone through "
            f"cross-attention (what the video is about), the frame-to-frame change signal through in-attention "
            f"(its rhythm); a text prompt still steers the style. This repository holds the adapter only "
            f"(`adapter_config.json`, `adapter_model.safetensors`).\n\n"
            f"## Model\n\n| | |\n|---|---|\n{table}")


def training_record(folder: Path, run=None, depth: int = 4) -> list[dict]:
    """The training stages that made an adapter folder, first stage first.

    Each stage is ``{"run", "recipe", "steps", "run_info"}`` read from a run folder
    (``recipe.json``; the last step of ``log.jsonl``; ``run.json`` when the trainer
    wrote one). A stage started from an adapter folder inside another run adds that
    run before it. Empty when no record is found.
    """
    given = run is not None
    run = Path(run) if given else folder.parent
    if not (run / "recipe.json").is_file():
        if given:
            raise ConfigError(f"{run}: not a training run folder (no recipe.json); pass the --output of the training")
        return []
    recipe = _json(run / "recipe.json")
    rows = _jsonl(run / "log.jsonl")
    steps = max((r["step"] for r in rows if isinstance(r.get("step"), int)), default=None)
    losses = [r for r in rows if isinstance(r.get("holdout_loss"), (int, float))]
    info = _json(run / "run.json") or {}
    stage = {"run": run.name, "recipe": recipe, "steps": info.get("steps", steps), "run_info": info,
             "holdout_loss": losses[-1]["holdout_loss"] if losses else None}
    init = info.get("init_adapter", recipe.get("init_adapter"))  # --init overrides the recipe's
    earlier = []
    if isinstance(init, str) and depth > 1 and Path(init).exists():  # a folder, or a file in it
        earlier = training_record(adapter_folder(init), None, depth - 1)
    elif isinstance(init, str):
        stage["init"] = init
    return earlier + [stage]


def _training_section(stages: list[dict], config: AdapterConfig) -> str:
    if not stages:
        return (f"## Training\n\nStage {config.stage}. No training record was found beside the adapter folder "
                f"(the run folder's recipe.json and log.jsonl).")
    lines = ["## Training", "", "Trained with Accelerate, the backbone frozen, in stages (recipes as data):", ""]
    for s in stages:
        r = s["recipe"]
        info = s["run_info"] or {}
        groups = r.get("trainable") or STAGE_GROUPS.get(r.get("stage"), ())
        done = f"{s['steps']:,} steps" if s["steps"] is not None else "steps not logged"
        # The recipe's file name only: the run's local paths mean nothing on the Hub.
        name = f" (`{Path(info['recipe']).name}`)" if info.get("recipe") else ""
        line = f"- **stage {r.get('stage')}**{name}: trains the {' and '.join(groups)} adapter; {done}"
        line += "; " + ", ".join(f"{k} {r[k]}" for k in RECIPE_FIELDS if k in r)
        if info.get("train_windows") is not None:
            line += (f"; data: {info['train_windows']:,} training windows of {info.get('window', '?')} s"
                     f" (+ {info.get('holdout_windows', 0):,} held out)")
        if s["holdout_loss"] is not None:
            line += f"; last holdout loss {s['holdout_loss']:.4f}"
        if s.get("init"):  # its last two parts: a public card names no local folder
            line += f"; started from `{Path(*Path(s['init']).parts[-2:])}`"
        lines.append(line)
    return "\n".join(lines)


def _eval_section(report) -> str:
    if report is None:
        return ""
    if not Path(report).is_file():
        raise ConfigError(f"{report}: no such file; pass the JSON written by `vidmusician eval --output`")
    data = _json(Path(report))
    if not isinstance(data, dict) or not isinstance(data.get("mean"), dict):
        raise ConfigError(f"{report}: not an eval report (the JSON of `vidmusician eval --output`)")
    means = {k: v for k, v in data["mean"].items() if isinstance(v, (int, float)) and math.isfinite(v)}
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    rows = [(_metric_label(k, settings), v) for k, v in means.items()]
    rows += [(f"frechet_distance[{k}]", v) for k, v in (data.get("frechet_distance") or {}).items()
             if isinstance(v, (int, float))]
    kl = data.get("kl_divergence")
    if isinstance(kl, dict) and isinstance(kl.get("kld"), (int, float)):
        rows.append(("kl_divergence[passt]", kl["kld"]))
    clips = len(data.get("files") or [])
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in rows)
    return (f"## Evaluation\n\n`vidmusician eval` on {clips} clip{'s' if clips != 1 else ''} "
            f"(means{_visual_beats(data.get('encoder') or {}, settings)}):\n\n"
            f"| metric | value |\n|---|---|\n{table}")


def _metric_label(metric: str, settings: dict) -> str:
    # A beat alignment means nothing without its tolerance (docs/evaluation.md: report the σ with the number).
    sigma = settings.get("ba_sigma")
    if metric == "beat_alignment" and isinstance(sigma, (int, float)):
        return f"beat_alignment (σ = {sigma:g} s)"
    return metric


def _visual_beats(encoder: dict, settings: dict) -> str:
    from .video.encoder_specs import ACTIVATION_NAMES

    if settings.get("source") == "flow":
        return ", visual beats from optical flow"
    if not encoder.get("spec"):
        return ""
    activation = ACTIVATION_NAMES.get(encoder.get("activation"))
    return f", visual beats from `{encoder['spec']}`" + (f" ({activation})" if activation else "")


def _usage_section(repo_id: str, backbone: str) -> str:
    name, local = shown_backbone(backbone)
    if local:  # only its owner has it: the usage passes a copy of it
        path = f"path/to/{name}"
        cli, kwarg = f" --backbone {path}", f', backbone="{path}"'
        note = (f"The backbone, `{name}`, is a local checkpoint that is not on the Hub: pass your copy of it "
                f"as shown (a folder with audiocraft's `state_dict.bin` and `compression_state_dict.bin`).\n\n")
        loads = f"  # with your copy of {name}"
    else:
        cli = kwarg = note = ""
        loads = "  # the backbone loads from its config"
    return (
        "## Usage\n\n"
        f"{note}"
        "With vidmusician installed:\n\n"
        "```bash\n"
        f"vidmusician generate clip.mp4 --adapter {repo_id}{cli} -o clip_scored.mp4\n"
        f"vidmusician generate clip.mp4 --adapter {repo_id}{cli} --text 'lo-fi, piano' -o clip.wav\n"
        "```\n\n"
        "```python\n"
        "from vidmusician import VidMusician, generate\n\n"
        f'wav, sample_rate = generate("clip.mp4", adapter="{repo_id}"{kwarg})\n\n'
        f'vm = VidMusician.from_pretrained("{repo_id}"{kwarg}){loads}\n'
        'wav = vm.generate(["clip.mp4"], texts=["lo-fi, piano"], seed=0)\n'
        "```\n\n"
        "The adapter's files come through `huggingface_hub` (its cache, `HF_HUB_OFFLINE`); "
        f"`{repo_id}@REVISION` picks a branch, tag or commit.")


def _license_section(license: str) -> str:
    return ("## License\n\n"
            f"Metadata license: `{license}`. The adapter works only with MusicGen's weights, which are released "
            "under CC-BY-NC 4.0 (non-commercial use only); audiocraft's code is MIT.")


def _json(path: Path) -> dict | None:
    """A run's JSON object, None when the file is not there (ConfigError when it is not an object)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON object; is this the run folder the trainer wrote?")
    return data


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line from a killed run
        if isinstance(row, dict):
            rows.append(row)
    return rows
