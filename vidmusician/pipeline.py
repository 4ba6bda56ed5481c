"""The one-call API: ``generate(video, adapter=...)`` probes the video, loads the
backbone, the adapter and the visual encoder, extracts the features, samples,
decodes, and returns ``(wav, sample_rate)`` of exactly the video's length.
:meth:`VidMusician.generate` (:func:`vidmusician.generation.windows.generate_batch`)
is the batched form for loaded models.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

from .backbones import load_backbone
from .errors import ConfigError
from .generation.guidance import DEFAULT_PLAUSIBILITY, GenerationParams
from .generation.windows import (check_duration, check_seed, generate_batch, sample_and_decode,
                                 set_encoder)
from .runtime import generation_device
from .sizing import config_for_backbone
from .video.encoders import VisualEncoder, load_encoder
from .video.reader import frames_covering, probe

__all__ = ["DEFAULT_BACKBONE", "load_models", "generate"]

DEFAULT_BACKBONE = "facebook/musicgen-small"


def generate(video, adapter=None, backbone=None, encoder: str | None = None, text: str | None = None,
             duration: float | None = None, cfg_coef: float = 3.0, top_k: int = 250, temperature: float = 1.0,
             seed: int | None = None, device=None, progress: bool = True, extend_stride: float | None = None,
             text_cfg_coef: float | None = None, video_cfg_coef: float | None = None,
             plausibility: float = DEFAULT_PLAUSIBILITY, engine: str = "fast", *, on_step=None):
    """Generates music for a video.

    Loads everything on each call; to generate repeatedly, load a
    :class:`VidMusician` once and call its :meth:`~VidMusician.generate`.

    Args:
        video: the video file.
        adapter: adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``),
            or a Hugging Face Hub id (``org/name``, ``org/name@revision``). None: plain MusicGen, the video only sets the length (a warning says so).
        backbone: MusicGen hub name, local folder, 'tiny', or a loaded MusicGen (the
            adapter is attached to it in place, once: to score many videos load a
            :class:`VidMusician` once and call its ``generate``); default: the adapter's
            backbone, or facebook/musicgen-small. Real weights download on first use.
        encoder: visual encoder spec; default: the adapter's. Given without an
            adapter, untrained (identity) adapters are attached so the video runs
            through the whole path; the music then equals plain MusicGen's.
        text: optional text prompt ("lo-fi, piano"), through MusicGen's own text
            conditioning, together with the video.
        duration: seconds of music; default: the video's duration.
        cfg_coef: classifier-free guidance coefficient of text and video together.
            Each guidance coefficient is in ``[0, 10]`` (0: that condition left out;
            negative ones, which would steer away from it, are refused).
        top_k: top-k sampling.
        temperature: sampling temperature.
        seed: seeds the sampling: same seed, same music. None: not seeded.
        device: 'cuda' or 'cpu' for models loaded here; default: CUDA when available.
        progress: progress bars on stderr.
        extend_stride: seconds between windows for music longer than the backbone's
            window (30 s); default 0.6 of the window (18 s).
        text_cfg_coef: guidance of the text alone; default ``cfg_coef``.
        video_cfg_coef: guidance of the video on top of the text; default ``cfg_coef``.
            Different from ``text_cfg_coef`` (and not 0), each step runs a third,
            text-only branch: up to 1.5x the time. 0: plain MusicGen with the text.
        plausibility: guidance ranks only the tokens the conditional branch gives at least
            this fraction of its top token's probability; 0: every token, MusicGen's guidance
            (see docs/alignment.md).
        engine: 'fast': the static-cache decode engine (one CUDA graph per step on a
            GPU) where it applies; 'reference': audiocraft's streaming forward.
        on_step: called after every sampling step as ``on_step(done, total)``: steps
            done so far, steps of the whole generation. An exception raised in it
            stops the generation and propagates (a way to cancel from another thread).

    Returns:
        ``(wav, sample_rate)``: ``wav`` a float tensor ``[channels, samples]`` on
        the CPU, exactly ``round(duration * sample_rate)`` samples.

    Raises:
        VidMusicianError: bad video, adapter, backbone, encoder or argument (one line).
    """
    params = GenerationParams(top_k=top_k, temperature=temperature, cfg_coef=cfg_coef, text_cfg_coef=text_cfg_coef,
                              video_cfg_coef=video_cfg_coef, extend_stride=extend_stride, plausibility=plausibility,
                              engine=engine)
    check_call(video, text, encoder, on_step)
    duration = check_duration(duration)
    info = probe(video)  # fails fast on a bad video, before any model loads
    if duration is None:
        duration = info.duration
    check_seed(seed)
    generation_device(device)  # a device this machine lacks, before any model loads
    vm, musicgen, params = load_for_generation(adapter, backbone, encoder, device, params)
    if vm is None:
        num_frames = frames_covering(duration, musicgen.frame_rate)
        wav = sample_and_decode(musicgen, [text], duration, num_frames, params, seed, progress, False,
                                on_step=on_step)
    else:
        wav = generate_batch(vm, [video], [text], duration=duration, seed=seed, progress=progress, params=params,
                             on_step=on_step)
    return wav[0], int(musicgen.sample_rate)


def check_call(video, text, encoder, on_step) -> None:
    """Refuses arguments of the wrong kind before any model loads (they would fail deep in pathlib or audiocraft).

    Raises:
        ConfigError: One line naming the argument and what :func:`generate` takes.
    """
    if not isinstance(video, (str, os.PathLike)):
        raise ConfigError(f"generate() takes a video file path, got {type(video).__name__}; for VideoFeatures "
                          "or a batch of videos load the models once (VidMusician.from_pretrained) and call "
                          "VidMusician.generate")
    if text is not None and not isinstance(text, str):
        hint = ("; for a text per video call VidMusician.generate(videos, texts=[...]) "
                "(generate_many takes one text for many videos)" if isinstance(text, (list, tuple)) else "")
        raise ConfigError(f"text must be a string (or None), got {type(text).__name__}{hint}")
    if encoder is not None and not isinstance(encoder, (str, VisualEncoder)):
        raise ConfigError(f"encoder must be a visual encoder spec such as 'ViT-B-32:openai' (or None: the "
                          f"adapter's), got {type(encoder).__name__}")
    if on_step is not None and not callable(on_step):
        raise ConfigError(f"on_step must be a function on_step(done, total) (or None), got {type(on_step).__name__}")


def load_for_generation(adapter, backbone, encoder, device, params: GenerationParams):
    """:func:`load_models`, and the sampling parameters for them (a warning when there is no adapter).

    Returns:
        ``(VidMusician or None, MusicGen, GenerationParams)``.

    Raises:
        LimitError: ``top_k`` or ``extend_stride`` beyond the backbone's bounds (before any video's features).
    """
    vm, musicgen = load_models(adapter, backbone, encoder, device)
    params.check(musicgen)
    if adapter is None:
        warnings.warn("no adapter: the video does not condition the music, it only sets its length "
                      "(pass an adapter folder for music that follows the video)", stacklevel=3)
        # Identity adapters learned nothing for guidance to amplify: sample exactly as plain MusicGen.
        params = dataclasses.replace(params, plausibility=0.0)
    return vm, musicgen, params


def load_models(adapter=None, backbone=None, encoder=None, device=None):
    """The models :func:`generate` runs, loaded once for many calls (as the demo does).

    Args:
        adapter: adapter folder or Hub id, or None for plain MusicGen.
        backbone: a loaded MusicGen or a name for :func:`~vidmusician.backbones.load_backbone`
            (default: the adapter's, else ``facebook/musicgen-small``).
        encoder: visual encoder spec (default: the adapter's).
        device: where the models run (default: CUDA when available).

    Returns:
        ``(VidMusician or None, MusicGen)``: None when there is neither an adapter nor an encoder.
    """
    # audiocraft comes with the model, not with this module: `vidmusician generate`
    # refuses a bad video or argument before it loads (seconds, not tens of them).
    from .model import VidMusician, attach_adapters, load_adapter

    if isinstance(adapter, VidMusician) or isinstance(backbone, VidMusician):
        raise ConfigError("a loaded VidMusician is no adapter or backbone to load: call its own vm.generate(videos) "
                          "(adapter= takes an adapter folder or Hub id, backbone= a MusicGen or its name)")
    if adapter is not None and not isinstance(adapter, (str, os.PathLike)):
        raise ConfigError(f"adapter must be an adapter folder or a Hub id (org/name), got {type(adapter).__name__}")
    if adapter is not None:
        vm = load_adapter(adapter, backbone=backbone, device=device)
        if encoder is not None:
            set_encoder(vm, encoder)
        return vm, vm.musicgen
    musicgen = backbone if _is_musicgen(backbone) else load_backbone(backbone or DEFAULT_BACKBONE, device=device)
    if encoder is None:
        return None, musicgen
    enc = load_encoder(encoder, device=next(musicgen.lm.parameters()).device)
    # Fresh adapters are identity at init: the video runs through every step of
    # the path (an installation check) and the music equals the base model's.
    config = config_for_backbone(musicgen, global_dim=enc.global_dim, local_dim=enc.num_patches,
                                 encoder=enc.name, encoder_activation=enc.activation)
    vm = attach_adapters(musicgen, config)
    vm.encoder = enc
    return vm, musicgen


def _is_musicgen(obj) -> bool:
    return obj is not None and hasattr(obj, "lm") and hasattr(obj, "compression_model")
