"""A tiny MusicGen whose LM has learned music: the base that tests and benchmarks of learning stand on.

The 'tiny' backbone's LM has random weights: its output heads cap how confident
any prediction can be, so an adapter on it cannot make the music follow the video
under ordinary sampling. 'tiny-learned' is the same architecture trained first as a
plain music LM (no video) on the synthetic music below, then frozen, as MusicGen is
when the adapters attach. It builds in about a minute on a CPU, identically from the
same seed, and is cached under ``$VIDMUSICIAN_CACHE`` (default
``~/.cache/vidmusician``), keyed by a hash of its recipe, its code version, torch's
version and the fresh model's weights, so a change to any of them rebuilds it.

The synthetic music, in the tiny codec's token space (25 frames per second):
codebook 0 plays a loop of ``PERIOD`` tokens that depends on the piece's style (one
of ``STYLES``), at a random phase; an event is two frames, ``EVENT`` (the attack) then
``EVENT + 1``, after which the loop resumes in phase. Codebooks 1-3 are fixed
functions of codebook 0. Without a video, where events fall and which style a piece
has are the only things the LM cannot know: exactly what the adapters must learn
from the video (events at flashes, style from the scene).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .fileio import atomic_write
from .random_backbones import tiny_musicgen
from .runtime import seeded
from .training.losses import codebook_losses

VERSION = 1  # bump when the music or the training below changes
STYLES, PERIOD = 4, 4
BACKGROUND = 10  # style s plays tokens BACKGROUND + s * PERIOD + (0..PERIOD-1)
EVENT = 40  # an event is EVENT (attack) then EVENT + 1 (decay)
FRAME_RATE = 25  # the tiny codec's


def event_frames(rng: random.Random, num_frames: int, rate: float = 0.12, min_gap: int = 4) -> list[int]:
    """Random event onsets: about ``rate`` per frame (~3 per second), at least ``min_gap`` frames apart."""
    frames: list[int] = []
    for f in range(2, num_frames - 3):
        if rng.random() < rate and (not frames or f - frames[-1] >= min_gap):
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


def event_onsets(row: torch.Tensor) -> list[int]:
    """The frames where codebook 0 (``row``, [T]) starts an event.

    An attack held over consecutive frames (``EVENT, EVENT, EVENT + 1``, which
    classifier-free guidance sometimes makes of the attack's next frame) is one
    event at its first frame, as an onset detector would hear it.
    """
    attack = row == EVENT
    attack[1:] &= ~attack[:-1].clone()
    return attack.nonzero().flatten().tolist()


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
    steps: int = 200  # held-out loss 0.077 nats per token (lr 6e-3: 0.084; 160 steps at 3e-3: 0.30)
    batch_size: int = 16
    num_frames: int = 100  # 4 s windows, the length the tests and the benchmark use
    lr: float = 1e-2
    warmup: int = 20


def _lm_loss(lm, codes: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per valid token, with a null text condition (the LM alone, no video)."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    conditions = [ConditioningAttributes(text={"description": None}) for _ in range(len(codes))]
    out = lm.compute_predictions(codes, conditions)
    sums, counts = codebook_losses(out.logits, codes, out.mask)
    return sums.sum() / counts.sum()


def heldout_loss(lm, num: int = 32, num_frames: int = 100, seed: int = 12345) -> float:
    """The LM's mean cross-entropy (nats per token) on fresh synthetic pieces no training batch holds."""
    rng = random.Random(seed)
    codes = torch.stack([random_piece(rng, num_frames, card=lm.card, n_q=lm.num_codebooks) for _ in range(num)])
    with torch.no_grad():
        return float(_lm_loss(lm, codes.to(next(lm.parameters()).device)))


def train_base(musicgen, recipe: BaseRecipe = BaseRecipe()) -> list[float]:
    """Trains ``musicgen.lm`` in place on synthetic music, then freezes it; returns the loss per step."""
    lm = musicgen.lm
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
            codes = torch.stack([random_piece(rng, recipe.num_frames, card=lm.card, n_q=lm.num_codebooks)
                                 for _ in range(recipe.batch_size)]).to(device)
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
    musicgen = tiny_musicgen(seed=recipe.seed, device=device)
    musicgen.name = "tiny-learned"
    return musicgen


def cache_dir() -> Path:
    """Where built bases are kept: ``$VIDMUSICIAN_CACHE`` or ``~/.cache/vidmusician``."""
    return Path(os.environ.get("VIDMUSICIAN_CACHE") or Path.home() / ".cache" / "vidmusician")


def recipe_key(recipe: BaseRecipe, fresh_lm) -> str:
    """A hash of everything the trained weights depend on."""
    h = hashlib.sha256(json.dumps({"recipe": asdict(recipe), "version": VERSION, "torch": torch.__version__},
                                  sort_keys=True).encode())
    for name, tensor in sorted(fresh_lm.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def learned_musicgen(recipe: BaseRecipe = BaseRecipe(), device="cpu", cache: bool = True):
    """The tiny MusicGen with its LM trained on synthetic music and frozen (backbone name 'tiny-learned').

    Args:
        recipe: how to train it; the default is what ``load_backbone('tiny-learned')`` gives.
        device: where to put the model (it is trained on the CPU, so it is the same everywhere).
        cache: read and write the cache (False: always train).

    Returns:
        an audiocraft ``MusicGen`` whose LM is in eval mode with no trainable parameter.
    """
    from safetensors.torch import load_file, save_file

    musicgen = _fresh(recipe, "cpu")
    path = cache_dir() / f"tiny-learned-{recipe_key(recipe, musicgen.lm)}.safetensors"
    if cache and path.is_file():
        musicgen.lm.load_state_dict(load_file(str(path)))
        musicgen.lm.eval().requires_grad_(False)
    else:
        train_base(musicgen, recipe)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.contiguous() for k, v in musicgen.lm.state_dict().items()}
            atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"recipe": json.dumps(asdict(recipe))}))
    if torch.device(device).type == "cpu":
        return musicgen
    from audiocraft.models.musicgen import MusicGen

    # Rebuilt on the device so that MusicGen sets up its autocast for it.
    return MusicGen(musicgen.name, musicgen.compression_model.to(device), musicgen.lm.to(device),
                    max_duration=musicgen.max_duration)
