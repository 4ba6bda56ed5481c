"""A tiny MusicGen whose LM has learned music: the base that tests and benchmarks of learning stand on.

The 'tiny' backbone's LM has random weights: its output heads cap how confident
any prediction can be, so an adapter on it cannot make the music follow the video
under ordinary sampling. 'tiny-learned' is the same architecture trained first as a
plain music LM (no video) on the synthetic music below, then frozen, as MusicGen is
when the adapters attach. It builds in about a minute on a CPU, identically from the
same seed, and is cached under ``$VIDMUSICIAN_CACHE`` (default
``~/.cache/vidmusician``), keyed by a hash of its recipe, its code version, torch's
version, the fresh LM's weights and the codec's, so a change to any of them rebuilds it.

The synthetic music, in its codec's token space (50 frames per second, the real codec's):
codebook 0 plays a loop of ``PERIOD`` tokens that depends on the piece's style (one
of ``STYLES``), at a random phase; an event is two frames, ``EVENT`` (the attack) then
``EVENT + 1``, after which the loop resumes in phase. Codebooks 1-3 are fixed
functions of codebook 0. Without a video, where events fall and which style a piece
has are the only things the LM cannot know: exactly what the adapters must learn
from the video (events at flashes, style from the scene).

Its codec (:func:`music_codec`) is the instrument that plays those codes: an
audiocraft ``EncodecModel`` whose encoder is an orthonormal frame transform (a
strided ``Conv1d`` onto 64 cosine atoms, 50 to 3200 Hz), whose decoder is that
transform's inverse (the ``ConvTranspose1d`` with the same weights), and whose
``ResidualVectorQuantizer`` codebooks are the encoder's embeddings of the
instrument's sounds: a background token is a quiet note (its pitch names its style
and loop position), ``EVENT`` a loud broadband burst, ``EVENT + 1`` its quieter
decay, codebooks 1-3 ever finer timbre detail. So decoded audio depends on the codes
(an event is heard as an onset where the codes put it), and synthetic music encodes
back to its own codes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..adapter.audiocraft_internals import codebooks
from ..fileio import atomic_write, held_lock
from ..losses import codebook_losses
from ..runtime import seeded
from .random_backbones import tiny_musicgen

VERSION = 3  # bump when the music, its codec or the training below changes
STYLES, PERIOD = 4, 4
BACKGROUND = 10  # style s plays tokens BACKGROUND + s * PERIOD + (0..PERIOD-1)
EVENT = 40  # an event is EVENT (attack) then EVENT + 1 (decay)
FRAME_RATE = 50  # the real 32 kHz codec's (and the tiny one's): the 25 fps video is resampled to it
SAMPLE_RATE, CARD, N_Q = 32000, 400, 4
HOP = SAMPLE_RATE // FRAME_RATE  # samples per codec frame
DIM = 64  # cosine atoms of the codec's frame transform


def event_frames(rng: random.Random, num_frames: int, fps: int = FRAME_RATE, rate: float = 3.0,
                 min_gap: float = 0.16) -> list[int]:
    """Random event onsets in codec frames: about ``rate`` per second, at least ``min_gap`` seconds apart.

    Args:
        rng: the random source.
        num_frames: the piece's length in codec frames.
        fps: the grid events fall on, per second: ``FRAME_RATE`` (any codec frame) for music
            alone, a video's frame rate (25) for events a video shows, each on one of its frames.
        rate, min_gap: events per second, and the least time between two.
    """
    step = FRAME_RATE // fps
    frames: list[int] = []
    for f in range(2 * step, num_frames - 3, step):
        if rng.random() < rate / fps and (not frames or f - frames[-1] >= min_gap * FRAME_RATE):
            frames.append(f)
    return frames


def _codebook_tables(card: int, n_q: int) -> torch.Tensor:
    """[n_q, card]: codebook q's token as a function of codebook 0's (row 0 is the identity)."""
    g = torch.Generator().manual_seed(1000 + VERSION)
    return torch.stack([torch.arange(card)] + [torch.randperm(card, generator=g) for _ in range(n_q - 1)])


def synthetic_codes(events, style: int, phase: int, num_frames: int, card: int = 400, n_q: int = 4) -> torch.Tensor:
    """The codes [n_q, num_frames] of a piece of synthetic music.

    Args:
        events: onset frames of the events (each takes its frame and the next).
        style: 0..STYLES-1, which loop codebook 0 plays.
        phase: 0..PERIOD-1, where in the loop frame 0 is.
        num_frames: length in codec frames.
        card, n_q: the codec's codebook size and count.
    """
    t = torch.arange(num_frames)
    row = BACKGROUND + style * PERIOD + (t + phase) % PERIOD
    for f in events:
        row[f] = EVENT
        if f + 1 < num_frames:
            row[f + 1] = EVENT + 1
    return _codebook_tables(card, n_q)[:, row]


def random_piece(rng: random.Random, num_frames: int, **kw) -> torch.Tensor:
    """A piece with random events, style and phase (what the base LM is trained on)."""
    return synthetic_codes(event_frames(rng, num_frames), rng.randrange(STYLES), rng.randrange(PERIOD), num_frames, **kw)


def frame_basis() -> torch.Tensor:
    """[DIM, HOP]: the codec's orthonormal frame transform, DCT-II atoms 2, 4, ..., 2 * DIM (50 Hz steps).

    DCT-II atom k is k * SAMPLE_RATE / (2 * HOP) Hz (25 Hz steps at 50 frames per second);
    every second atom completes a whole number of periods per frame, so a note held
    over frames is one continuous sine, with no click at the frame boundaries.
    """
    n = torch.arange(HOP, dtype=torch.float64)
    spacing = 2 * HOP * 50 // SAMPLE_RATE  # atoms 50 Hz apart (every second atom at 50 frames per second)
    k = spacing * torch.arange(1, DIM + 1, dtype=torch.float64)
    return (torch.cos(torch.pi * (n[None] + 0.5) * k[:, None] / HOP) * (2 / HOP) ** 0.5).float()


def instrument(seed: int = 0) -> torch.Tensor:
    """[N_Q, CARD, DIM]: each token's sound, as coefficients of :func:`frame_basis` (the codec's codebooks).

    Scales: a unit coefficient is a sine of peak 0.04. Background notes peak near 0.1,
    an event's attack is a burst of RMS ~0.25 (an onset anyone hears), its decay 0.4 of
    that; tokens the music never plays are quiet random sounds; codebook q >= 1 adds
    detail 10^-q as loud, each codebook's entries far apart at its own scale, so the
    residual quantizer reads every level back (see :func:`music_codec`).
    """
    g = torch.Generator().manual_seed(seed)

    def sounds(n: int, norm: float) -> torch.Tensor:  # random directions of a given loudness
        v = torch.randn(n, DIM, generator=g)
        return norm * v / v.norm(dim=1, keepdim=True)

    table = torch.stack([sounds(CARD, 2.5 * 10.0 ** -q) for q in range(N_Q)])
    for i in range(STYLES * PERIOD):  # style s, loop position p: a pure tone, 250 Hz upwards in 150 Hz steps
        # One sine each: every step of the loop changes the spectrum alike, so no step
        # stands out as an onset beside the events.
        table[0, BACKGROUND + i] = 2.5 * torch.nn.functional.one_hot(torch.tensor(4 + 3 * i), DIM)
    burst = torch.randint(0, 2, (DIM,), generator=g).float() * 2 - 1
    table[0, EVENT], table[0, EVENT + 1] = 1.1 * burst, 0.45 * burst
    return table


def synthetic_audio(codes: torch.Tensor, jitter: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The waveform [..., 1, T * HOP] at SAMPLE_RATE that the instrument plays for codes [..., N_Q, T].

    Args:
        codes: tokens per codebook and frame (from :func:`synthetic_codes`).
        jitter: performance variation: each frame's loudness varies by this fraction,
            and noise 40 dB below 0.1 that no codebook holds is added (0: the exact sounds).
        seed: the variation's random seed.
    """
    g = torch.Generator().manual_seed(seed)
    table = instrument()
    coef = sum(table[q][codes[..., q, :]] for q in range(N_Q))  # [..., T, DIM]
    if jitter:
        coef = coef * (1 + jitter * (2 * torch.rand(coef.shape[:-1] + (1,), generator=g) - 1))
    audio = (coef @ frame_basis()).flatten(-2)[..., None, :]
    if jitter:
        audio = audio + 1e-3 * torch.randn(audio.shape, generator=g)
    return audio


class _WholeFrames(torch.nn.Module):
    """Pads audio at its end to whole codec frames, as EnCodec's own encoder does (ceil(T / HOP) frames)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, -x.shape[-1] % HOP))


def music_codec(device="cpu"):
    """The codec of 'tiny-learned': an audiocraft ``EncodecModel`` that plays the synthetic music's tokens.

    Encoder: ``Conv1d(1, DIM, HOP, stride=HOP)`` with the orthonormal :func:`frame_basis`
    as weights; decoder: ``ConvTranspose1d`` with the same weights, its inverse on the
    basis' span; quantizer: audiocraft's ``ResidualVectorQuantizer`` (4 codebooks of 400)
    with the :func:`instrument` as its codebooks. Deterministic (no randomness beyond
    the instrument's fixed seed) and built in milliseconds, so it is built, not cached.
    """
    from audiocraft.models.encodec import EncodecModel
    from audiocraft.quantization import ResidualVectorQuantizer

    basis = frame_basis()[:, None, :]  # [DIM, 1, HOP]: the layout of both Conv1d's and ConvTranspose1d's weight
    conv = torch.nn.Conv1d(1, DIM, HOP, stride=HOP, bias=False)
    deconv = torch.nn.ConvTranspose1d(DIM, 1, HOP, stride=HOP, bias=False)
    # kmeans_init=False: the codebooks are set below, never re-fitted on the first batch.
    quantizer = ResidualVectorQuantizer(dimension=DIM, n_q=N_Q, bins=CARD, kmeans_init=False)
    with torch.no_grad():
        conv.weight.copy_(basis)
        deconv.weight.copy_(basis)
        for book, sounds in zip(codebooks(quantizer), instrument()):
            book.embed.copy_(sounds)
            book.embed_avg.copy_(sounds)
    codec = EncodecModel(torch.nn.Sequential(_WholeFrames(), conv), deconv, quantizer, frame_rate=FRAME_RATE,
                         sample_rate=SAMPLE_RATE, channels=1)
    return codec.eval().requires_grad_(False).to(device)


def event_onsets(row: torch.Tensor) -> list[int]:
    """The frames where codebook 0 (``row``, [T]) starts an event.

    An attack held over consecutive frames (``EVENT, EVENT, EVENT + 1``, which
    classifier-free guidance sometimes makes of the attack's next frame) is one
    event at its first frame, as an onset detector would hear it.
    """
    attack = row == EVENT
    attack[1:] &= ~attack[:-1].clone()
    return attack.nonzero().flatten().tolist()


def audio_onsets(audio, sample_rate: int) -> list[float]:
    """Onset times (seconds) an onset detector hears in a mono waveform: what audio-space metrics see.

    librosa's onset detection through :func:`vidmusician.evaluation.onsets.music_rhythm` with
    LORIS's 3-frame peak picking: D2M-GAN's 1-frame windows miss about one burst in
    ten of this codec's music, whose attack spreads over two envelope frames.
    """
    import julius

    from ..evaluation.onsets import ONSET_PRESETS, music_rhythm  # librosa: loaded only when audio is scored

    config = ONSET_PRESETS["loris"]
    y = julius.resample_frac(torch.as_tensor(audio, dtype=torch.float32).reshape(-1), sample_rate, config.sample_rate)
    return music_rhythm(y.numpy(), config).onsets.tolist()


def piece_style(row: torch.Tensor) -> int:
    """The style codebook 0 (``row``, [T]) plays most, or -1 when it plays no style's loop."""
    loop = row[(row >= BACKGROUND) & (row < BACKGROUND + STYLES * PERIOD)]
    if len(loop) == 0:
        return -1
    return int(torch.bincount((loop - BACKGROUND) // PERIOD, minlength=STYLES).argmax())


def match_events(predicted, true, tolerance: int = 1) -> tuple[float, float, float]:
    """Precision, recall and F1 of predicted event frames against true ones.

    Each true event is matched to at most one predicted event within ``tolerance``
    frames (nearest first); an empty prediction of an empty truth is perfect.
    """
    free = sorted(true)
    matched = 0
    for f in sorted(predicted):
        near = [g for g in free if abs(g - f) <= tolerance]
        if near:
            free.remove(min(near, key=lambda g: abs(g - f)))
            matched += 1
    precision = matched / len(predicted) if predicted else float(not true)
    recall = matched / len(true) if true else float(not predicted)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class BaseRecipe:
    """How the learned base is trained (its hash names the cache entry)."""

    seed: int = 0
    steps: int = 200  # held-out loss 0.049 nats per token (at 25 Hz, batch 16 of 100 frames: 0.077)
    batch_size: int = 8  # 8 windows of 200 frames: the tokens per step of 16 at 25 Hz
    num_frames: int = 200  # 4 s windows, the length the tests and the benchmark use
    lr: float = 1e-2
    warmup: int = 20


def _lm_loss(lm, codes: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per valid token, with a null text condition (the LM alone, no video)."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    conditions = [ConditioningAttributes(text={"description": None}) for _ in range(len(codes))]
    out = lm.compute_predictions(codes, conditions)
    sums, counts = codebook_losses(out.logits, codes, out.mask)
    return sums.sum() / counts.sum()


def heldout_loss(lm, num: int = 32, num_frames: int = 200, seed: int = 12345) -> float:
    """The LM's mean cross-entropy (nats per token) on fresh synthetic pieces no training batch holds."""
    rng = random.Random(seed)
    codes = torch.stack([random_piece(rng, num_frames, card=lm.card, n_q=lm.num_codebooks) for _ in range(num)])
    with torch.no_grad():
        return float(_lm_loss(lm, codes.to(next(lm.parameters()).device)))


def train_base(musicgen, recipe: BaseRecipe = BaseRecipe()) -> list[float]:
    """Trains ``musicgen.lm`` in place on synthetic music, then freezes it; returns the loss per step.

    The LM learns from what its codec makes of the music: each batch is played by the
    instrument (:func:`synthetic_audio`) and encoded by ``musicgen.compression_model``,
    as ``vidmusician prepare`` encodes real music.
    """
    lm, codec = musicgen.lm, musicgen.compression_model
    device = next(lm.parameters()).device
    rng = random.Random(recipe.seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.0)
    # Linear warmup then cosine to zero: the usual LM schedule, short.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * s / recipe.steps)).item()))
    losses = []
    with seeded(recipe.seed):
        lm.train()
        for _ in range(recipe.steps):
            score = torch.stack([random_piece(rng, recipe.num_frames, card=lm.card, n_q=lm.num_codebooks)
                                 for _ in range(recipe.batch_size)])
            with torch.no_grad():
                codes, _ = codec.encode(synthetic_audio(score).to(device))
            loss = _lm_loss(lm, codes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
    lm.eval().requires_grad_(False)
    return losses


def _fresh(recipe: BaseRecipe, device):
    """The untrained base: the tiny random LM, with the codec that plays the synthetic music."""
    from audiocraft.models.musicgen import MusicGen

    tiny = tiny_musicgen(seed=recipe.seed, device=device)
    return MusicGen("tiny-learned", music_codec(device), tiny.lm, max_duration=tiny.max_duration)


def cache_dir() -> Path:
    """Where built bases are kept: ``$VIDMUSICIAN_CACHE`` or ``~/.cache/vidmusician``."""
    return Path(os.environ.get("VIDMUSICIAN_CACHE") or Path.home() / ".cache" / "vidmusician")


def recipe_key(recipe: BaseRecipe, fresh) -> str:
    """A hash of everything the trained weights depend on: recipe, code version, torch, the fresh LM and the codec."""
    # The codec's timing by name too: a codec whose weights stayed but whose frame rate changed
    # gives the same tensors other meanings (the music's events per second).
    h = hashlib.sha256(json.dumps({"recipe": asdict(recipe), "version": VERSION, "torch": torch.__version__,
                                   "frame_rate": float(fresh.compression_model.frame_rate)}, sort_keys=True).encode())
    for prefix, module in (("lm.", fresh.lm), ("codec.", fresh.compression_model)):
        for name, tensor in sorted(module.state_dict().items()):
            h.update((prefix + name).encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def learned_musicgen(recipe: BaseRecipe = BaseRecipe(), device="cpu", cache: bool = True):
    """The tiny MusicGen with its LM trained on synthetic music and frozen (backbone name 'tiny-learned').

    Args:
        recipe: how to train it; the default is what ``load_backbone('tiny-learned')`` gives.
        device: where to put the model (it is trained on the CPU, so it is the same everywhere).
        cache: read and write the cache (False: always train).

    Returns:
        an audiocraft ``MusicGen`` (its codec: :func:`music_codec`) whose LM is in eval mode with no
        trainable parameter.
    """
    from safetensors.torch import load_file, save_file

    musicgen = _fresh(recipe, "cpu")
    path = cache_dir() / f"tiny-learned-{recipe_key(recipe, musicgen)}.safetensors"
    # Processes that need the same base at once (parallel tests, two trainings) build it once.
    with held_lock(path.with_name(f".{path.name}.lock")) if cache else nullcontext():
        if cache and path.is_file():
            musicgen.lm.load_state_dict(load_file(str(path)))
            musicgen.lm.eval().requires_grad_(False)
        else:
            train_base(musicgen, recipe)
            if cache:
                state = {k: v.contiguous() for k, v in musicgen.lm.state_dict().items()}
                atomic_write(path, lambda tmp: save_file(state, str(tmp),
                                                         metadata={"recipe": json.dumps(asdict(recipe))}))
    if torch.device(device).type == "cpu":
        return musicgen
    from audiocraft.models.musicgen import MusicGen

    # Rebuilt on the device so that MusicGen sets up its autocast for it.
    return MusicGen(musicgen.name, musicgen.compression_model.to(device), musicgen.lm.to(device),
                    max_duration=musicgen.max_duration)
