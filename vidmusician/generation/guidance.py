"""Sampling parameters and one window's sampling loop, with text and video guided separately.

MusicGen's classifier-free guidance runs ``[cond; uncond]`` in one batch and
takes ``uncond + c * (cond - uncond)``: with video adapters the conditional
branch has text and video, the unconditional one neither, so one coefficient
scales both. Steering them apart takes a third branch, the text alone::

    logits = null + t * (text - null) + v * (text_video - text)

run as the rows ``[text+video; text; null]`` of one batch (1.5x the rows of
two). Where the third branch would add nothing (``t == v``: the formula is
``null + t * (text_video - null)``; ``v == 0``; or no video at all) the
two-branch batch runs, at the cost and with the tokens of MusicGen's own.

Where the video acts, guidance ranks only the tokens the conditional branch finds
plausible (``plausibility``, default 0.01; the rest get ``-inf``): extrapolating from
the frozen base through adapters trained on lossy soundtracks would otherwise lift the
codec noise they learned above the video's events (docs/alignment.md).

:func:`sample_window` is ``LMModel.generate``'s step loop with the guided step
in place of its own; everything else (patterns, streaming, sampling
functions, condition encoding) is audiocraft's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import guidance as check_guidance
from ..errors import ConfigError
from .limits import STRIDE_FRACTION, BackboneLimits

__all__ = ["DEFAULT_PLAUSIBILITY", "GenerationParams", "Guidance", "guidance_conditions", "guided_logits", "sample_window"]

# Guidance ranks only the tokens the conditional branch gives at least this fraction of its top
# token's probability (Guidance.plausibility; measured in docs/alignment.md).
DEFAULT_PLAUSIBILITY = 0.01
# Decoders of a window: the static-cache engine (where it applies), audiocraft's streaming forward.
ENGINES = ("fast", "reference")


@dataclass(frozen=True)
class Guidance:
    """The branches of a guided step, and how their logits combine.

    The model batch is the branches' rows one after the other, ``B`` rows each
    (``B`` samples).

    Attributes:
        video: per branch, whether its rows carry the video: the row layout the
            :class:`~vidmusician.adapter.context.VideoContext` is given.
        text: per branch, whether its rows carry the text conditions (else the
            null conditions of MusicGen's unconditional branch).
        text_coef: ``t``, the weight of ``text - null``.
        video_coef: ``v``, the weight of ``text_video - text`` (three branches only;
            two branches take ``null + t * (cond - null)``).
        plausibility: ``alpha``: guidance only ranks the tokens the conditional branch
            (the first) finds plausible, those whose probability is at least ``alpha``
            times its most likely token's; the others get ``-inf``. 0: every token
            (MusicGen's guidance). Branches without video ignore it (no filter), and
            so do the samples without a video in a batch with some
            (:meth:`combine`'s ``filtered``).
    """

    video: tuple[bool, ...]
    text: tuple[bool, ...]
    text_coef: float
    video_coef: float
    plausibility: float = 0.0

    def __post_init__(self):
        # With no video acting, nothing the adapters learned is amplified: the step is MusicGen's, unfiltered.
        if not any(self.video):
            object.__setattr__(self, "plausibility", 0.0)

    @classmethod
    def two_branch(cls, coef: float, video: bool = True, plausibility: float = 0.0) -> "Guidance":
        """``[cond; null]``, MusicGen's batch; ``cond`` has the video when ``video``."""
        return cls((video, False), (True, False), coef, coef if video else 0.0, plausibility)

    @classmethod
    def three_branch(cls, text_coef: float, video_coef: float, plausibility: float = 0.0) -> "Guidance":
        """``[text+video; text; null]``."""
        return cls((True, False, False), (True, True, False), text_coef, video_coef, plausibility)

    @classmethod
    def plan(cls, text_coef: float, video_coef: float, has_video: bool = True, has_text: bool = True,
             plausibility: float = 0.0) -> "Guidance":
        """The cheapest batch that computes ``null + t (text - null) + v (text_video - text)``."""
        if not has_video or video_coef == 0:
            # text_video == text (no video), or its weight is 0: plain MusicGen with the text.
            return cls.two_branch(text_coef, video=False)
        if not has_text:
            return cls.two_branch(video_coef, plausibility=plausibility)  # text == null: null + v (video - null)
        if text_coef == video_coef:
            return cls.two_branch(text_coef, plausibility=plausibility)  # null + t (text_video - null)
        return cls.three_branch(text_coef, video_coef, plausibility)

    @property
    def branches(self) -> int:
        return len(self.video)

    def combine(self, logits: torch.Tensor, batch: int, filtered: torch.Tensor | None = None) -> torch.Tensor:
        """Guided logits of ``batch`` samples from the branches' logits (rows stacked by branch).

        ``filtered``: per sample (``batch`` booleans, any shape of that many), whether the
        plausibility filter applies: the samples that have a video. A sample without one
        gets MusicGen's guidance, so its music is what it gets alone whatever its batch.
        None: every sample.
        """
        if self.plausibility > 0:
            return self._filtered(logits.float(), batch, filtered)
        if self.branches == 2:
            cond, null = logits.split(batch)
            # audiocraft's expression, operation for operation: the same tokens as MusicGen.
            return null + (cond - null) * self.text_coef
        text_video, text, null = logits.split(batch)
        return null + (text - null) * self.text_coef + (text_video - text) * self.video_coef

    def _filtered(self, logits: torch.Tensor, batch: int, filtered: torch.Tensor | None) -> torch.Tensor:
        """The guided logits of the conditional's plausible tokens; ``-inf`` for the rest (see ``plausibility``).

        Guidance extrapolates from the null branch (the frozen base) through the
        conditional one, so it multiplies every difference between them, the
        implausible tail included: adapters trained on lossy soundtracks learn the
        codec's noise in the fine codebooks, which lifts tokens the base rules out,
        and guidance 3 would lift them above the events the video calls for. Among
        the tokens the conditional itself finds plausible the extrapolation only
        reorders what the model would play (contrastive decoding's plausibility
        constraint). Computed in float32: finite for any coefficient whose products
        with the branch differences stay below float32's 3.4e38.
        """
        branches = logits.split(batch)
        cond, null = branches[0], branches[-1]
        if self.branches == 2:
            guided = null + (cond - null) * self.text_coef
        else:
            guided = null + (branches[1] - null) * self.text_coef + (cond - branches[1]) * self.video_coef
        # log p(x) - log p(top) = logit(x) - max logit: no softmax needed; the top token always stays.
        keep = cond - cond.amax(dim=-1, keepdim=True) >= math.log(self.plausibility)
        if filtered is not None:
            keep = keep | ~filtered.reshape(-1, *(1,) * (keep.dim() - 1))
        return guided.masked_fill(~keep, -math.inf)


@dataclass
class GenerationParams:
    """Sampling and windowing parameters (audiocraft's names and defaults).

    Attributes:
        use_sampling: sample (True) or take the argmax (False).
        top_k: sample among the k most likely tokens (0: no top-k).
        top_p: nucleus sampling mass; 0 uses top_k instead.
        temperature: softmax temperature.
        cfg_coef: classifier-free guidance coefficient of text and video together
            (the unconditional branch has neither); the default of the two below.
            Each of the three is in ``[0, 10]`` (:data:`vidmusician.checks.MAX_GUIDANCE`).
        text_cfg_coef: guidance of the text alone (``t``); None: ``cfg_coef``.
        video_cfg_coef: guidance of the video on top of the text (``v``); None:
            ``cfg_coef``. With ``t != v`` (and ``v != 0``) a step runs three
            branches, ``[text+video; text; null]``: 1.5x the rows of a two-branch step.
        extend_stride: seconds a new window advances past the previous one for
            music longer than the backbone's window; None: 0.6 of the window
            (audiocraft's 18 s of 30 s).
        two_step_cfg: must stay False (see below).
        plausibility: guidance ranks only the tokens whose probability under the
            conditional branch is at least this fraction of its most likely token's
            (:class:`Guidance`); 0: every token, MusicGen's guidance.
        engine: 'fast' decodes with the static-cache engine
            (:mod:`vidmusician.generation.engine`, one CUDA graph per step on a GPU) where
            it applies; 'reference' with audiocraft's streaming forward.
    """

    use_sampling: bool = True
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    text_cfg_coef: float | None = None
    video_cfg_coef: float | None = None
    extend_stride: float | None = None
    two_step_cfg: bool = False
    plausibility: float = DEFAULT_PLAUSIBILITY
    engine: str = "fast"

    def __post_init__(self):
        if self.two_step_cfg:
            # Two-step CFG runs the conditional and unconditional branches as two
            # batches of the same size: the adapters cannot tell which one must get
            # the null video, so the guidance would be wrong.
            raise ConfigError("two_step_cfg=True is not supported with video adapters: the unconditional "
                              "pass cannot be told apart; use the default batched CFG (two_step_cfg=False)")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ConfigError(f"top_k must be a non-negative integer, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in [0, 1], got {self.top_p}")
        if not 0.0 <= self.plausibility <= 1.0:
            raise ConfigError(f"plausibility must be in [0, 1] (0: no filter), got {self.plausibility}")
        if self.use_sampling and not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        for name in ("cfg_coef", "text_cfg_coef", "video_cfg_coef"):
            if getattr(self, name) is not None:
                setattr(self, name, check_guidance(name, getattr(self, name)))
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.extend_stride is not None and not self.extend_stride > 0:
            raise ConfigError(f"extend_stride must be positive seconds, got {self.extend_stride}")
        self.top_k = int(self.top_k)

    @property
    def samples(self) -> bool:
        """Whether tokens are drawn at random (else each step takes the argmax: greedy)."""
        return self.use_sampling and self.temperature > 0.0

    def guidance(self, has_video: bool = True, has_text: bool = True) -> Guidance:
        """The guided step these coefficients call for (see :meth:`Guidance.plan`)."""
        t = self.cfg_coef if self.text_cfg_coef is None else self.text_cfg_coef
        v = self.cfg_coef if self.video_cfg_coef is None else self.video_cfg_coef
        return Guidance.plan(float(t), float(v), has_video, has_text, float(self.plausibility))

    def check(self, musicgen) -> None:
        """Checks top_k and extend_stride against the backbone (:class:`~vidmusician.generation.limits.LimitError`)."""
        BackboneLimits.of(musicgen).check(self.top_k, self.extend_stride)

    def window_frames(self, musicgen) -> tuple[int, int]:
        """(window length, stride) in codec frames for this backbone (:meth:`check` bounds the stride)."""
        fr, max_duration = musicgen.frame_rate, musicgen.max_duration
        stride = STRIDE_FRACTION * max_duration if self.extend_stride is None else self.extend_stride
        return int(max_duration * fr), int(fr * stride)


def guidance_conditions(lm, attributes, guidance: Guidance) -> dict:
    """The encoded text conditions of every branch's rows, for ``lm``'s forward.

    Text branches repeat the samples' own conditions; the null branch has them all
    dropped, as ``LMModel.generate`` makes it (for two branches these are exactly
    its ``conditions + null_conditions``).
    """
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    rows = [c for has_text in guidance.text for c in (attributes if has_text else null)]
    provider = lm.condition_provider
    return provider(provider.tokenize(rows))


def guided_logits(lm, sequence: torch.Tensor, conditions: dict, guidance: Guidance,
                  filtered: torch.Tensor | None = None) -> torch.Tensor:
    """One forward of the branches' batch: guided logits ``[B, K, card]`` of the last step.

    Args:
        lm: the LM (streaming inside :func:`sample_window`).
        sequence: ``[B, K, S]`` pattern steps of the B samples.
        conditions: :func:`guidance_conditions` of the same guidance.
        guidance: the branches and their coefficients.
        filtered: the samples the plausibility filter applies to (see :meth:`Guidance.combine`).
    """
    batch = sequence.shape[0]
    logits = lm(sequence.repeat(guidance.branches, 1, 1), conditions=[], condition_tensors=conditions)
    return guidance.combine(logits[:, :, -1], batch, filtered)  # [B, K, S, card] -> last step


def sample_token(logits: torch.Tensor, params: GenerationParams, row_seeds=None) -> torch.Tensor:
    """``[B, K, 1]`` tokens from ``[B, K, card]`` logits, as ``LMModel._sample_next_token`` samples.

    ``row_seeds``: a :class:`~vidmusician.generation.row_seeds.RowSeeds` samples each row
    under its own RNG state; None: the batch draws from torch's RNG.
    """
    from audiocraft.utils import utils

    if params.samples and row_seeds is not None:
        return row_seeds.sample(lambda row: sample_token(row, params), logits)
    if params.samples:
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p > 0.0:
            return utils.sample_top_p(probs, p=params.top_p)
        if params.top_k > 0:
            return utils.sample_top_k(probs, k=params.top_k)
        return utils.multinomial(probs, num_samples=1)
    return torch.argmax(logits, dim=-1, keepdim=True)


@torch.no_grad()
def sample_window(lm, prompt: torch.Tensor, conditions: dict, guidance: Guidance, max_gen_len: int,
                  params: GenerationParams, callback=None, row_seeds=None,
                  filtered: torch.Tensor | None = None) -> torch.Tensor:
    """Codes of one window, its prompt included: ``LMModel.generate``'s loop, guided by ``guidance``.

    Args:
        lm: the LM; its video context must already hold the row layout ``guidance.video``.
        prompt: ``[B, K, T]`` codes the window starts with (T may be 0).
        conditions: :func:`guidance_conditions` for these samples and this guidance.
        guidance: the branches and their coefficients.
        max_gen_len: codec frames of the window, prompt included.
        params: sampling parameters.
        callback: called after every step.
        row_seeds: per-row RNG states (:func:`sample_token`); None: torch's RNG.
        filtered: the samples the plausibility filter applies to (see :meth:`Guidance.combine`).

    Returns:
        ``[B, K, max_gen_len]`` codes.
    """
    assert not lm.training, "generation runs in eval mode"
    B, K, T = prompt.shape
    assert T < max_gen_len, (T, max_gen_len)
    unknown = -1  # codes not generated yet
    pattern = lm.pattern_provider.get_pattern(max_gen_len)
    codes = torch.full((B, K, max_gen_len), unknown, dtype=torch.long, device=prompt.device)
    codes[..., :T] = prompt
    sequence, _, mask = pattern.build_pattern_sequence(codes, lm.special_token_id)
    with lm.streaming():
        previous = 0
        for offset in range(pattern.get_first_step_with_timesteps(T), sequence.shape[-1]):
            logits = guided_logits(lm, sequence[..., previous:offset], conditions, guidance, filtered)
            token = sample_token(logits, params, row_seeds)
            # Positions the pattern leaves empty hold the special token; prompt codes stay.
            token[~mask[..., offset:offset + 1].expand(B, -1, -1)] = lm.special_token_id
            current = sequence[..., offset:offset + 1]
            sequence[..., offset:offset + 1] = torch.where(current == unknown, token, current)
            previous = offset
            if callback is not None:
                callback()
    codes, _, _ = pattern.revert_pattern_sequence(sequence, special_token=unknown)
    codes = codes[..., :max_gen_len]
    assert (codes != unknown).all()
    return codes
