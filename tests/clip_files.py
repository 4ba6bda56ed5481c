"""CLIP weight files in the formats users load, written offline with tiny dims and random weights.

- :func:`write_openai_archive`: OpenAI's released format (``ViT-B-32.pt``): a
  TorchScript archive whose state dict has OpenAI's key names, weights partly in
  float16, and the ``input_resolution`` / ``context_length`` / ``vocab_size``
  entries; open_clip's ``load_openai_model`` reads it as it reads the real file.
- :func:`write_state_dict`: an open_clip state dict (``.safetensors`` or a
  ``torch.save`` zip).
- :func:`write_hub_pretrained`: the weights of a pretrained tag in a Hugging Face
  cache, under the file name open_clip downloads (``open_clip_model.safetensors``).
- :func:`register_arch` / :func:`register_pretrained_tag`: a tiny ViT in OpenAI's
  shape (heads of width 64, MLP ratio 4: what OpenAI's loader infers) added to
  open_clip's model registry, plain and ``-quickgelu`` like ``ViT-B-32``, and a
  pretrained tag for it stored like ``ViT-B-32:openai`` (``quick_gelu=True``, an
  ``hf_hub`` repo).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

ARCH = "vmtest-clip-tiny"
ARCH_QUICKGELU = f"{ARCH}-quickgelu"
# OpenAI's loader infers heads as width // 64 and the MLP ratio 4: the widths are 64.
ARCH_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 1, "layers": 1},
}
TAG = "openai"
HUB_REPO = "vidmusician-test/vmtest-clip-tiny.openai"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def register_arch() -> None:
    """Adds ``vmtest-clip-tiny`` and ``vmtest-clip-tiny-quickgelu`` to open_clip's model registry (once)."""
    import open_clip

    if ARCH_QUICKGELU in open_clip.list_models():
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in ((ARCH, {}), (ARCH_QUICKGELU, {"quick_gelu": True})):
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps({**ARCH_CONFIG, **extra}))
            open_clip.add_model_config(path)


def register_pretrained_tag(monkeypatch) -> None:
    """Registers ``vmtest-clip-tiny:openai`` as open_clip's pretrained.py stores ``ViT-B-32:openai``.

    open_clip has no public call for this: the entry goes into its ``_PRETRAINED``
    table (undone by ``monkeypatch``), under the plain name and the ``-quickgelu``
    one, as open_clip copies quick_gelu tags. Only ``hf_hub`` is set (no url), so
    nothing can be fetched from the web.
    """
    from open_clip import pretrained

    register_arch()
    cfg = dict(pretrained.get_pretrained_cfg("ViT-B-32", "openai"), url="", hf_hub=f"{HUB_REPO}/")
    assert cfg["quick_gelu"] is True  # as the real tag's
    for name in (ARCH, ARCH_QUICKGELU):
        monkeypatch.setitem(pretrained._PRETRAINED, name, {TAG: dict(cfg)})


def random_clip(seed: int = 0):
    """An open_clip CLIP of the test architecture with QuickGELU and random weights, rounded as OpenAI ships them.

    The weights OpenAI stores in float16 (convolutions, linears, attention,
    projections) are rounded to float16 and back, so every file written from this
    model holds exactly the same numbers.
    """
    import open_clip
    from open_clip.model import convert_weights_to_fp16

    register_arch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(ARCH_QUICKGELU, pretrained=None)
    convert_weights_to_fp16(model)
    return model.float().eval()


class _OpenAIArchive(torch.nn.Module):
    """OpenAI's CLIP module layout: the towers' parameters at the top level, plus three int entries."""

    def __init__(self, model):
        super().__init__()
        self.visual = model.visual
        self.transformer = model.transformer
        self.token_embedding = model.token_embedding
        self.ln_final = model.ln_final
        self.positional_embedding = model.positional_embedding
        self.text_projection = model.text_projection
        self.logit_scale = model.logit_scale
        # OpenAI's archives carry these as tensors in the state dict (open_clip drops them).
        self.register_buffer("input_resolution", torch.tensor(model.visual.image_size[0]))
        self.register_buffer("context_length", torch.tensor(model.context_length))
        self.register_buffer("vocab_size", torch.tensor(model.vocab_size))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.to(self.visual.conv1.weight.dtype))


def write_openai_archive(path, model) -> Path:
    """Writes ``model`` as OpenAI ships CLIP: a TorchScript archive, weights partly float16.

    ``model`` is left unchanged (a copy is converted).
    """
    import copy
    import warnings

    from open_clip.model import convert_weights_to_fp16

    path = Path(path)
    model = copy.deepcopy(model)
    convert_weights_to_fp16(model)  # what OpenAI stores in float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and OpenAI's format is TorchScript
        torch.jit.script(_OpenAIArchive(model)).save(str(path))
    return path


def write_state_dict(path, model) -> Path:
    """Writes ``model``'s open_clip state dict: safetensors for ``.safetensors``, else ``torch.save``."""
    path = Path(path)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def write_open_clip_folder(folder, model, model_cfg: dict) -> Path:
    """Writes open_clip's folder format (``local-dir:`` and hub repos): config JSON plus weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    write_state_dict(folder / "open_clip_model.safetensors", model)
    return folder


def write_hub_pretrained(cache, model, repo_id: str = HUB_REPO) -> Path:
    """Puts ``model``'s weights in a Hugging Face cache as open_clip downloads a tag's ``hf_hub`` repo.

    open_clip asks the hub for ``open_clip_model.safetensors`` first; offline,
    huggingface_hub resolves ``refs/main`` to a snapshot folder of the cache.

    Returns:
        The weights file.
    """
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return write_state_dict(snapshot / "open_clip_model.safetensors", model)


def offline_hub_cache(monkeypatch, cache) -> Path:
    """Points huggingface_hub at an empty cache ``cache``, offline (env and the constants it read at import)."""
    from huggingface_hub import constants

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_HOME", str(cache.parent)), ("HF_HUB_CACHE", str(cache))):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(cache.parent))
    return cache
