"""Generation with a loaded model: music for a batch of videos of any length, window by window.

Long videos follow audiocraft's own extension scheme (``MusicGen._generate_tokens``):
windows of ``max_duration`` seconds, each new window prompted by the tail of the
previous one, advancing by ``extend_stride``. The window loop is reimplemented
here rather than patched into audiocraft so that every window can be told where
it starts in the video: ``context.set(videos, frame_offset)`` with the codec frame
of the window's first token (its prompt's first token), and the row layout of the
guided batch (:mod:`vidmusician.generation.guidance`): which rows carry the video. With the
same seed and no video it samples exactly the tokens ``MusicGen.generate`` samples.
"""

from __future__ import annotations

import operator
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..adapter.audiocraft_internals import text_conditions
from ..adapter.context import VideoBatch
from ..errors import ConfigError
from ..progress import progress_bar
from ..runtime import seeded
from ..video.encoder_specs import check_encoder_fit
from ..video.encoders import load_encoder
from ..video.features import VideoFeatures, extract_features
from ..video.reader import frames_covering
from .engine_select import select_engine
from .guidance import GenerationParams, guidance_conditions, sample_window
from .limits import MAX_DURATION, MIN_DURATION
from .row_seeds import RowSeeds

__all__ = ["GenerationParams", "Window", "plan_windows", "generate_tokens", "generate_batch", "check_duration",
           "check_seed", "features_of", "sample_and_decode", "sample_tokens", "decode", "set_encoder"]


# Called after every sampling step with (steps done, total steps of the generation).
StepCallback = Callable[[int, int], object]


@dataclass(frozen=True)
class Window:
    """One window of a long generation (one streaming pass), in codec frames.

    Attributes:
        index: 0 for the first window.
        frame_offset: frame of the music (and video) at the window's first token;
            its prompt starts there.
        prompt_frames: frames given as prompt (the previous window's tail).
        frames: frames the window holds, prompt included (``max_gen_len``).
    """

    index: int
    frame_offset: int
    prompt_frames: int
    frames: int


def plan_windows(num_frames: int, window: int, stride: int) -> list[Window]:
    """Windows covering ``num_frames``, as ``MusicGen._generate_tokens`` lays them out.

    Window k starts at ``k * stride``; all but the first are prompted by the
    previous window's frames from ``stride`` on, and each adds its frames past
    the prompt, so the new frames of all windows are exactly ``num_frames``.
    """
    assert num_frames >= 1 and 0 < stride < window, (num_frames, window, stride)
    windows = []
    offset = prompt = 0
    while offset + prompt < num_frames:
        frames = min(num_frames - offset, window)
        windows.append(Window(len(windows), offset, prompt, frames))
        prompt, offset = frames - stride, offset + stride
    return windows


def generate_tokens(musicgen, attributes, num_frames: int, params: GenerationParams, vm=None, videos=None,
                    progress: bool = False, row_seeds=None, on_step: StepCallback | None = None) -> torch.Tensor:
    """Samples ``num_frames`` codec frames, window by window.

    Args:
        musicgen: the audiocraft MusicGen (adapted or not).
        attributes: audiocraft ``ConditioningAttributes``, one per sample (text).
        num_frames: codec frames to generate.
        params: sampling and windowing parameters.
        vm: the :class:`VidMusician` holding ``musicgen``'s adapters, or None.
        videos: the :class:`VideoBatch` (from time 0) the adapters read.
        progress: show a progress bar over all windows' steps.
        row_seeds: a :class:`~vidmusician.generation.row_seeds.RowSeeds` samples each
            row under its own RNG state; None: the batch draws from torch's RNG.
        on_step: called after every sampling step, on either engine, as
            ``on_step(done, total)``: the steps done so far and the steps of the
            whole generation (all windows; the progress bar's counts). An exception
            raised in it stops the generation at that step and propagates.

    Returns:
        ``[B, K, num_frames]`` codes.
    """
    lm = musicgen.lm
    params.check(musicgen)
    window, stride = params.window_frames(musicgen)
    windows = plan_windows(num_frames, window, stride)
    has_video = vm is not None and videos is not None and bool(videos.present.any())
    if has_video:
        _warn_if_memory_is_short(vm.config, windows[0].frames / musicgen.frame_rate)
    # No prompt in the batch: its text rows would be its null rows, a third branch for nothing.
    has_text = any(value for a in attributes for value in a.text.values())
    guidance = params.guidance(has_video, has_text)
    # Hooks of the VidMusician's own (the adapters' context) do not ask for the reference path.
    own_hooks = (vm._hook.id,) if vm is not None else ()
    engine = select_engine(lm, params, len(attributes), guidance, windows[0].frames, own_hooks)
    total = _total_steps(lm, windows)
    bar = _progress_bar(total, progress)
    done = 0

    def step():
        nonlocal done
        done += 1
        bar.update(1)
        if on_step is not None:
            on_step(done, total)

    pieces = []
    device = next(lm.parameters()).device
    prompt = torch.zeros(len(attributes), lm.num_codebooks, 0, dtype=torch.long, device=device)
    try:
        with musicgen.autocast:
            # Encoded once: the text conditions are the same in every window.
            conditions = guidance_conditions(lm, attributes, guidance)
        for w in windows:
            if vm is not None:
                # Step 0 of this window is frame w.frame_offset of the video; the
                # model's rows are the guidance's branches, which say who gets it.
                vm.context.set(videos, w.frame_offset, branches=guidance.video, frames=w.frames)
            if len(windows) > 1:
                bar.set_description(f"window {w.index + 1}/{len(windows)}")
            with musicgen.autocast:
                if engine is not None:
                    codes = engine.sample_window(prompt, conditions, guidance, w.frames, params, videos=videos,
                                                 frame_offset=w.frame_offset, callback=step,
                                                 max_global_tokens=vm.config.max_global_tokens if vm else 0,
                                                 row_seeds=row_seeds)
                else:
                    codes = sample_window(lm, prompt, conditions, guidance, w.frames, params,
                                          callback=step, row_seeds=row_seeds,
                                          filtered=videos.present.to(device) if has_video else None)
            pieces.append(codes[..., w.prompt_frames:])
            prompt = codes[..., stride:]
    finally:
        if vm is not None:
            vm.context.set(None)
        bar.close()
    tokens = torch.cat(pieces, dim=-1)
    assert tokens.shape[-1] == num_frames, (tokens.shape, num_frames)
    return tokens


def _warn_if_memory_is_short(config, window_seconds: float) -> None:
    """Says, once per generation, when a window needs more memory than the adapters hold or were trained on."""
    needed = frames_covering(window_seconds, config.global_fps)
    if needed > config.max_global_tokens:
        held = config.max_global_tokens / config.global_fps
        warnings.warn(f"the adapter's memory holds {config.max_global_tokens} global frames ({held:g} s at "
                      f"{config.global_fps:g}/s), so the video past {held:g} s of each {window_seconds:g} s window "
                      f"is not seen; train adapters on windows as long as the backbone's", stacklevel=3)
    if config.trained_window is None:
        return  # not trained, or trained before the window was recorded: nothing to compare
    trained = frames_covering(config.trained_window, config.global_fps)
    if min(needed, config.max_global_tokens) > trained:
        # The memory's positions past the training windows' frames kept their initial random values.
        warnings.warn(f"the adapter was trained on {config.trained_window:g} s windows, so its memory's positions "
                      f"past {trained} global frames are untrained and each {window_seconds:g} s window reads them; "
                      f"prepare the data with a longer --window and train again", stacklevel=3)


def count_steps(musicgen, num_frames: int, params: GenerationParams) -> int:
    """The sampling steps :func:`generate_tokens` runs for ``num_frames`` frames (all windows)."""
    return _total_steps(musicgen.lm, plan_windows(num_frames, *params.window_frames(musicgen)))


def _total_steps(lm, windows: Sequence[Window]) -> int:
    steps = 0
    for w in windows:  # sequence steps lm.generate runs: those past the prompt's last step
        pattern = lm.pattern_provider.get_pattern(w.frames)
        steps += len(pattern.layout) - pattern.get_first_step_with_timesteps(w.prompt_frames)
    return steps


def _progress_bar(total: int, enabled: bool):
    return progress_bar(total=total, unit="step", desc="generating", enabled=enabled, dynamic_ncols=True)


def generate_batch(vm, videos, texts=None, duration: float | None = None, seed: int | None = None,
                   progress: bool = False, return_tokens: bool = False, params: GenerationParams | None = None,
                   *, on_step: StepCallback | None = None):
    """:meth:`VidMusician.generate`: music for a batch of videos with a loaded model.

    Args:
        vm: the :class:`VidMusician`.
        videos: one entry per sample: a video file, its ``VideoFeatures``, or None
            (null video: the backbone alone); or a ``VideoBatch``.
        texts: one text prompt (or None) per sample; None: no text.
        duration: seconds of music; default: the longest video.
        seed: seeds the sampling (same seed, same music); None: not seeded. A list,
            one seed per sample, seeds each sample's row on its own: a sample then gets
            the music it gets in a batch of its own under its seed, whatever the batch.
        progress: progress bars for feature extraction and sampling.
        return_tokens: also return the codes.
        params: default: ``vm.generation_params`` (audiocraft's defaults if unset).
        on_step: called after every sampling step as ``on_step(done, total)`` (steps
            done, steps of the whole generation), e.g. to show progress or to cancel:
            an exception raised in it stops the generation and propagates.

    Returns:
        ``[B, channels, round(duration * sample_rate)]`` float audio on the CPU
        (and the ``[B, K, frames]`` codes with ``return_tokens``).
    """
    check_seed(seed)
    if on_step is not None and not callable(on_step):
        raise ConfigError(f"on_step must be a function on_step(done, total) (or None), got {type(on_step).__name__}")
    if isinstance(videos, (str, os.PathLike)):
        raise ConfigError("videos must be a list (one entry per sample); for one video use [video]")
    if isinstance(videos, VideoBatch):
        texts = _texts(texts, videos.size)
        features, batch_duration = videos, videos.local.shape[1] / videos.frame_rate
    else:
        try:
            videos = list(videos)  # an iterator or a generator too: it is read once
        except TypeError:
            raise ConfigError(f"videos must be a list (one entry per sample), got {type(videos).__name__}") from None
        if not videos:
            raise ConfigError("videos is empty: give one entry (a video, its features or None) per sample")
        texts = _texts(texts, len(videos))  # before any video is read
        features = [features_of(vm, v, progress) for v in videos]
        batch_duration = max((f.duration for f in features if f is not None), default=None)
    duration = check_duration(batch_duration if duration is None else duration)
    if duration is None:
        raise ConfigError("no video in the batch to take the duration from: pass duration=SECONDS")
    params = params or vm.generation_params or GenerationParams()
    musicgen = vm.musicgen
    num_frames = frames_covering(duration, musicgen.frame_rate)
    batch = vm.make_batch(features) if isinstance(features, VideoBatch) else vm.make_batch(features, num_frames)
    return sample_and_decode(musicgen, texts, duration, num_frames, params, seed, progress, return_tokens,
                              vm=vm, videos=batch, on_step=on_step)


def check_duration(duration):
    """None, or a number of seconds from one codec frame to a day (else ConfigError)."""
    if duration is None:
        return None
    if isinstance(duration, bool):
        raise ConfigError(f"duration must be a number of seconds, got {duration!r}")
    try:
        value = float(duration)
    except (TypeError, ValueError):
        raise ConfigError(f"duration must be a number of seconds, got {duration!r}") from None
    if not (MIN_DURATION <= value <= MAX_DURATION):
        raise ConfigError(f"duration must be a number of seconds in [{MIN_DURATION:g}, {MAX_DURATION:g}] "
                          f"(one codec frame at least), got {duration}")
    return value


# -- internals -----------------------------------------------------------------


def set_encoder(vm, spec):
    """Loads the encoder ``spec`` for ``vm`` (checked against the adapter's widths and activation)."""
    c = vm.config
    activation = c.encoder_activation if spec == c.encoder else None  # the adapter's own encoder, as it was trained
    enc = load_encoder(spec, device=vm.device, activation=activation)
    check_encoder_fit(c, f"visual encoder {enc.name!r}", enc.name, enc.activation, (enc.global_dim, enc.num_patches))
    vm.encoder = enc
    return enc


def features_of(vm, video, progress: bool):
    """VideoFeatures for one batch entry (a file is encoded with the model's encoder)."""
    if video is None:
        return None
    if isinstance(video, VideoFeatures):
        check_encoder_fit(vm.config, "video features", video.encoder, video.encoder_activation)
        return video
    if not isinstance(video, (str, os.PathLike)):
        raise ConfigError(f"a video must be a file path, VideoFeatures or None, got {type(video).__name__}")
    encoder = vm.encoder if vm.encoder is not None else set_encoder(vm, vm.config.encoder)
    c = vm.config
    return extract_features(video, encoder, global_fps=c.global_fps, local_fps=c.local_fps, progress=progress)


def _texts(texts, size: int) -> list:
    if texts is None:
        return [None] * size
    if isinstance(texts, str):
        raise ConfigError("texts must be a list (one prompt or None per sample)")
    texts = list(texts)
    if len(texts) != size:
        raise ConfigError(f"got {len(texts)} texts for {size} videos; give one text (or None) per video")
    for i, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise ConfigError(f"texts[{i}] must be a string (or None), got {type(text).__name__}")
    return texts


def sample_and_decode(musicgen, texts, duration, num_frames, params, seed, progress, return_tokens,
                      vm=None, videos=None, on_step: StepCallback | None = None):
    """Samples ``num_frames`` frames (seeded), decodes them, and cuts the audio to ``duration`` seconds."""
    tokens = sample_tokens(musicgen, texts, num_frames, params, seed, progress, vm=vm, videos=videos,
                           on_step=on_step)
    wav = decode(musicgen, tokens, duration)
    return (wav, tokens) if return_tokens else wav


# Generations in one process run one at a time: a seed is set in torch's random stream, which
# every thread shares, and a model holds one video context and one decode engine. Another
# thread's generation waits for its turn (processes generate in parallel).
GENERATING = threading.RLock()


def sample_tokens(musicgen, texts, num_frames, params, seed, progress, vm=None, videos=None,
                  on_step: StepCallback | None = None) -> torch.Tensor:
    """``[B, K, num_frames]`` codes for the texts (and videos), seeded.

    ``seed``: an int seeds the batch, a list of ints (one per sample) each sample's
    row on its own (:class:`~vidmusician.generation.row_seeds.RowSeeds`), None nothing.
    ``on_step``: as for :func:`generate_tokens`. Runs under :data:`GENERATING`.
    """
    # MusicGen's own preparation of the text conditions, so that without video the
    # tokens are exactly the ones MusicGen.generate samples.
    attributes = text_conditions(musicgen, texts)
    device = next(musicgen.lm.parameters()).device
    seed, row_seeds = check_seed(seed), None
    if isinstance(seed, list):
        if len(seed) != len(texts):
            raise ConfigError(f"got {len(seed)} seeds for {len(texts)} samples; give one seed per sample")
        seed, row_seeds = None, RowSeeds(seed, device)
    with GENERATING, torch.no_grad(), seeded(seed, device):
        return generate_tokens(musicgen, attributes, num_frames, params, vm=vm, videos=videos, progress=progress,
                               row_seeds=row_seeds, on_step=on_step)


def decode(musicgen, tokens: torch.Tensor, duration: float) -> torch.Tensor:
    """``[B, channels, round(duration * sample_rate)]`` float audio on the CPU from ``[B, K, frames]`` codes."""
    with torch.no_grad():
        wav = musicgen.generate_audio(tokens).float().cpu()
    samples = int(round(duration * musicgen.sample_rate))
    if wav.shape[-1] >= samples:
        wav = wav[..., :samples]
    else:  # pragma: no cover - the frames cover the duration by construction
        wav = torch.nn.functional.pad(wav, (0, samples - wav.shape[-1]))
    return wav


SEED_RANGE = (-2 ** 63, 2 ** 64 - 1)


def check_seed(seed):
    """None, the seed as an int, or a list of ints for a list of seeds (else ConfigError)."""
    if seed is None:
        return None
    if isinstance(seed, (list, tuple)):
        if any(s is None for s in seed):
            raise ConfigError(f"a list of seeds needs an integer for every sample, got {list(seed)!r}")
        return [check_seed(s) for s in seed]
    if isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    try:
        value = operator.index(seed)
    except TypeError:
        raise ConfigError(f"seed must be an integer, got {seed!r}") from None
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:  # torch.manual_seed's range
        raise ConfigError(f"seed must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}, got {seed}")
    return value
