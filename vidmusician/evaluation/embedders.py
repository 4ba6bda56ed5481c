"""Audio embedders that music-generation papers report Fréchet audio distances with.

- ``clap``: LAION-CLAP (Wu et al., 2023) through transformers' ``ClapModel``,
  by default ``laion/larger_clap_music`` (CLAP trained with music). One
  L2-normalized embedding per 10 s window, the model's input length (as
  fadtk's ``clap-laion-music``). Its text tower also gives the CLAP text-music
  score of a clip generated from a prompt.
- ``vggish``: VGGish (Hershey et al., 2017), the embedder of the original FAD
  (Kilgour et al., 2019), through the ``torchvggish`` port that
  ``frechet_audio_distance`` loads: one 128-d embedding per 0.96 s, without
  the PCA postprocessing and before the last ReLU, as that package does.

Weights download on first use (Hugging Face cache for CLAP, torch hub cache
for VGGish); a local folder or file can be given instead. Every embedder is a
callable ``(audio [S] float32, sample_rate) -> [n, D]`` with a
``sample_rate`` attribute (the rate it wants its audio at), so it plugs into
:func:`vidmusician.evaluation.frechet.frechet_audio_distance`.
"""

from __future__ import annotations

import importlib
import json
import math
import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, one_line
from ..hub_reach import hub_unreachable, offline_mode, offline_set
from .downloads import check_download, download_timeout, weights_unavailable
from .onsets import load_audio

DEFAULT_CLAP = "laion/larger_clap_music"
# What a Hugging Face model id looks like ('org/name', or 'name'); anything else is a path.
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


class ClapEmbedder:
    """CLAP audio and text embeddings (transformers' ``ClapModel``).

    Args:
        model: A ``transformers.ClapModel``.
        processor: Its ``transformers.ClapProcessor``.
        device: Where to run; ``None``: CUDA if available.
    """

    name = "clap"

    def __init__(self, model: Any, processor: Any, device: str | None = None):
        from ..runtime import default_device  # torch: not imported with the CLI

        self.device = default_device(device)
        self.model = model.eval().to(self.device)
        self.processor = processor
        features = processor.feature_extractor
        self.sample_rate = int(features.sampling_rate)
        self.window = int(features.nb_max_samples)
        # A fused model takes CLAP's 4-view "fusion" input; an unfused one a
        # single view, which "rand_trunc" gives (and leaves a window no longer
        # than the model's input as it is: no random crop).
        self.truncation = "fusion" if model.config.audio_config.enable_fusion else "rand_trunc"

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_CLAP, device: str | None = None) -> ClapEmbedder:
        """Loads a CLAP checkpoint: a Hugging Face model id or a local folder.

        A model id comes from the Hugging Face cache at once when the Hub cannot be
        reached (or ``HF_HUB_OFFLINE`` is set); one not in the cache is one line then.

        Args:
            name_or_path: A Hugging Face model id (downloaded on first use) or a folder
                saved with ``save_pretrained``.
            device: Where to run; ``None``: CUDA if available.

        Raises:
            ConfigError: The checkpoint is missing (not in the cache with no Hub to
                download it from) or not a CLAP model.
        """
        from transformers import ClapModel, ClapProcessor

        name = str(name_or_path)
        hub_id = not Path(name).exists() and _HUB_ID.fullmatch(name) is not None
        # A Hub that does not answer: the cache decides at once, not after the ~25 s of retries
        # per file that huggingface_hub spends on an unreachable Hub.
        unreachable = hub_id and hub_unreachable(name, "config.json")
        try:
            with offline_mode(unreachable):
                model = ClapModel.from_pretrained(name)
                processor = ClapProcessor.from_pretrained(name)
        except (OSError, ValueError) as exc:
            if hub_id and (unreachable or offline_set()):
                why = "HF_HUB_OFFLINE is set" if not unreachable else "the Hub could not be reached"
                raise ConfigError(
                    f"CLAP model {name!r}: no such folder, and not in the Hugging Face cache ({why}); download "
                    f"it once with a network connection, or pass a folder saved with save_pretrained "
                    f"(--clap-model DIR)"
                ) from None
            # The default id is no fix for itself.
            other = "" if name == DEFAULT_CLAP else (f"a Hugging Face id such as {DEFAULT_CLAP} "
                                                     "(downloaded on first use), or ")
            raise ConfigError(f"CLAP model {name!r} cannot be loaded ({one_line(exc)}); pass {other}a folder saved "
                              f"with save_pretrained (--clap-model DIR)") from None
        return cls(model, processor, device)

    def windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """Consecutive windows of the model's input length; a last one under 1 s is dropped unless it is the only one."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        chunks = [audio[i : i + self.window] for i in range(0, max(len(audio), 1), self.window)]
        keep = [c for c in chunks if len(c) >= self.sample_rate]
        return keep or chunks[:1]

    @property
    def unit(self) -> str:
        """What one embedding covers, for messages."""
        return f"{self.window / self.sample_rate:g} s window"

    def embedding_count(self, num_samples: int) -> int:
        """How many embeddings :meth:`__call__` gives for audio of ``num_samples`` (known before embedding)."""
        return len(self.windows(np.zeros(num_samples, np.float32)))

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """``[n_windows, D]`` unit-norm audio embeddings of a mono waveform at :attr:`sample_rate`."""
        import torch

        _check_rate(sample_rate, self.sample_rate, "CLAP")
        inputs = self.processor(
            audio=self.windows(audio), sampling_rate=self.sample_rate, return_tensors="pt", truncation=self.truncation
        )
        with torch.no_grad():
            out = self.model.get_audio_features(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.pooler_output.float().cpu().numpy()

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), D]`` unit-norm text embeddings."""
        import torch

        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True)
        with torch.no_grad():
            out = self.model.get_text_features(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.pooler_output.float().cpu().numpy()


class VGGishEmbedder:
    """VGGish embeddings of 0.96 s frames (``torchvggish``).

    Args:
        model: ``torchvggish``'s VGG, built without postprocessing.
        device: Where to run; ``None``: CUDA if available.
    """

    name = "vggish"
    sample_rate = 16000  # VGGish's input rate
    unit = "0.96 s frame"  # what one embedding covers, for messages

    def __init__(self, model: Any, device: str | None = None):
        import torch

        from ..runtime import default_device

        self.device = default_device(device)
        # frechet_audio_distance drops the last ReLU (its use_activation=False):
        # the distance then sees the linear features, not their clipped halves.
        layers = list(model.embeddings.children())
        if isinstance(layers[-1], torch.nn.ReLU):
            model.embeddings = torch.nn.Sequential(*layers[:-1])
        self.model = model.eval().to(self.device)

    @staticmethod
    def build() -> Any:
        """VGGish's architecture with random weights (no download)."""
        from torchvggish.torchvggish import _vgg

        return _vgg(postprocess=False)

    @classmethod
    def from_pretrained(cls, weights: str | Path | None = None, device: str | None = None) -> VGGishEmbedder:
        """Loads VGGish's weights: ``torchvggish``'s release (downloaded once into the torch hub cache) or a file.

        Raises:
            ConfigError: ``torchvggish`` is not installed, or the file is missing or not VGGish's.
        """
        import torch

        try:
            from torchvggish.torchvggish import VGGISH_WEIGHTS
        except ImportError:
            raise ConfigError("the vggish embedder needs torchvggish: `pip install torchvggish`") from None
        model = cls.build()
        try:
            if weights is None:
                check_download(VGGISH_WEIGHTS_NAME, VGGISH_WEIGHTS, vggish_fix(VGGISH_WEIGHTS))
                with download_timeout():  # a network that never answers: one line, not a wait for good
                    state = torch.hub.load_state_dict_from_url(VGGISH_WEIGHTS, progress=False, map_location="cpu")
            else:
                state = torch.load(Path(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except OSError as exc:
            if weights is None:  # the download: no network, or the release cannot be reached
                raise weights_unavailable(VGGISH_WEIGHTS_NAME, exc, vggish_fix(VGGISH_WEIGHTS)) from None
            raise ConfigError(f"VGGish weights {weights}: cannot be loaded ({type(exc).__name__}); check the file") from None
        except (RuntimeError, KeyError, pickle.UnpicklingError) as exc:
            where = VGGISH_WEIGHTS if weights is None else weights
            raise ConfigError(f"VGGish weights {where}: cannot be loaded ({type(exc).__name__}); check the file") from None
        return cls(model, device)

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """``[n_frames, 128]`` embeddings, one per 0.96 s of a mono waveform at 16 kHz."""
        import torch
        from torchvggish import vggish_input

        _check_rate(sample_rate, self.sample_rate, "VGGish")
        examples = vggish_input.waveform_to_examples(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate)
        if examples.shape[0] == 0:
            raise ConfigError(f"VGGish needs at least 0.96 s of audio, got {len(audio) / sample_rate:.2f} s")
        with torch.no_grad():
            return self.model(examples.to(self.device)).float().cpu().numpy().reshape(examples.shape[0], -1)


VGGISH_WEIGHTS_NAME = "VGGish's weights (torchvggish)"


def vggish_fix(url: str) -> str:
    """How to run the vggish embedder without downloading its weights."""
    return f"pass --vggish-weights FILE, a copy of {url}"


def load_embedder(spec: str, clap_model: str = DEFAULT_CLAP, vggish_weights: str | Path | None = None) -> Any:
    """An embedder from a command-line spec.

    ``clap``, ``vggish``, or ``package.module:name``: a callable
    ``(audio [S] float32, sample_rate) -> [n, D]`` of the user's (a
    ``sample_rate`` attribute on it sets the rate it receives).

    Args:
        spec: The spec.
        clap_model: CLAP checkpoint for ``clap``: a Hugging Face id
            (downloaded on first use) or a folder.
        vggish_weights: VGGish weights file for ``vggish``; ``None``:
            torchvggish's release (downloaded on first use).

    Returns:
        ``(name, embedder)``; the name keys its distance in the report.

    Raises:
        ConfigError: An unknown name, a module or callable that is missing,
            or a model that cannot be loaded.
    """
    if spec == "clap":
        return spec, ClapEmbedder.from_pretrained(clap_model)
    if spec == "vggish":
        return spec, VGGishEmbedder.from_pretrained(vggish_weights)
    if ":" not in spec:
        raise ConfigError(f"--embedder {spec!r}: unknown embedder; use clap, vggish or package.module:name")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--embedder {spec!r}: expected 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--embedder {spec!r}: cannot import {module_name} ({one_line(exc)}); install it or fix the name"
        ) from None
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise ConfigError(f"--embedder {spec!r}: {module_name} has no callable {attr!r}")
    return spec, obj


class Prompts(dict):
    """Text prompts by clip name, and the file they came from (:attr:`path`, for messages)."""

    def __init__(self, prompts: dict[str, str], path: str | Path):
        super().__init__(prompts)
        self.path = Path(path)


def read_prompts(path: str | Path) -> Prompts:
    """Text prompts by clip name from a JSON file ``{"clip": "prompt", ...}``.

    A clip is named by its video's stem or file name (``clip`` or ``clip.mp4``
    for ``videos/clip.mp4``); :func:`vidmusician.evaluation.evaluate.evaluate`
    refuses a name that matches no video.

    Raises:
        ConfigError: The file is missing, not JSON, or not an object of strings.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:  # missing, a folder, unreadable: what the file system said
        raise ConfigError(f"--prompts {one_line(exc)}; check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--prompts {path}: not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--prompts {path}: not valid JSON (line {exc.lineno}: {exc.msg}); check the file") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f'--prompts {path}: expected a JSON object of clip name -> prompt, e.g. {{"clip": "calm piano"}}')
    return Prompts(data, path)


def clap_score(audio_embeddings: np.ndarray, text_embedding: np.ndarray) -> float:
    """CLAP text-music score: cosine similarity of a clip's audio and its prompt's text embedding.

    As reported by text-to-music papers (e.g. the CLAP score of Stable Audio's
    and MusicLDM's evaluations), from LAION-CLAP (Wu et al., 2023). A clip
    embedded window by window is represented by the mean of its windows'
    unit-norm embeddings.

    Args:
        audio_embeddings: ``[n, D]`` (or ``[D]``) audio embeddings of one clip.
        text_embedding: ``[D]`` embedding of its prompt.

    Returns:
        The cosine in ``[-1, 1]``.
    """
    audio = np.atleast_2d(np.asarray(audio_embeddings, np.float64))
    text = np.asarray(text_embedding, np.float64).reshape(-1)
    if audio.shape[1] != text.size:
        raise ConfigError(f"audio and text embeddings differ in size ({audio.shape[1]} vs {text.size}); use one CLAP model")
    audio = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    mean = audio.mean(axis=0)
    return float(mean @ text / (np.linalg.norm(mean) * np.linalg.norm(text)))


def clap_text_scores(
    files: Sequence[str | Path], prompts: Sequence[str | None], clap: ClapEmbedder
) -> list[float]:
    """The CLAP text-music score of each file against its prompt (``nan`` without one).

    See :func:`clap_score`.

    Args:
        files: Generated music files.
        prompts: The prompt each was generated from, or ``None``.
        clap: The CLAP model.
    """
    wanted = [i for i, p in enumerate(prompts) if p]
    texts = clap.embed_text([prompts[i] for i in wanted]) if wanted else []
    scores = [math.nan] * len(files)
    for i, text in zip(wanted, texts):
        scores[i] = clap_score(clap(load_audio(files[i], clap.sample_rate), clap.sample_rate), text)
    return scores


def _check_rate(got: int, want: int, what: str) -> None:
    if int(got) != want:
        raise ConfigError(f"{what} takes audio at {want} Hz, got {got} Hz; resample it first")
