"""The video a forward pass is conditioned on, and its alignment to the token timeline.

The wrappers in :mod:`vidmusician.adapter.wiring` read the video from a
:class:`VideoContext` that the caller sets before ``generate`` or
``compute_predictions``; audiocraft's ConditionFuser is not involved.

Timeline: with MusicGen's delay pattern, the hidden state at sequence step ``s``
predicts frame ``s`` of codebook 0, so step ``s`` of a window that starts at
``frame_offset`` reads the local features of codec frame ``frame_offset + s``.

Shapes use the letters of :mod:`vidmusician.adapter.layers` (``n`` the model rows that
carry video, ``s`` steps, ``t`` memory tokens, ``d`` model width, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..video.features import VideoFeatures
from ..video.reader import frames_covering


def resample_local(
    local: torch.Tensor, local_fps: float, frame_rate: float, num_frames: int, offset: float = 0.0
) -> torch.Tensor:
    """Linearly resamples the local change signal to another frame rate (the codec's).

    Row ``s`` of the result is the signal at time ``offset + s / frame_rate``,
    interpolated between the two nearest local frames. Times before 0 or after
    the video (past ``Tl / local_fps``) get zeros: no video, no change.

    Args:
        local: ``[Tl, P]`` change signal at ``local_fps``.
        local_fps: Its rate.
        frame_rate: Target rate (``compression_model.frame_rate``).
        num_frames: Rows to produce.
        offset: Time in seconds of the first row (a generation window's start).

    Returns:
        ``[num_frames, P]`` tensor, dtype and device of ``local``.
    """
    tl, p = local.shape
    # Positions in float64 on the CPU: at 50 Hz for an hour, float32 time would
    # drift by frames (and some devices have no float64).
    pos = (offset + torch.arange(num_frames, dtype=torch.float64) / frame_rate) * local_fps
    # Snap rounding noise onto knots, so that e.g. -1e-17 reads frame 0, not "before the video".
    pos = torch.where((pos - pos.round()).abs() < 1e-9, pos.round(), pos)
    i0 = torch.floor(pos)
    w = (pos - i0).to(device=local.device, dtype=local.dtype).unsqueeze(1)
    i0 = i0.long().to(local.device)
    # Row Tl is a zero row: the signal ramps to zero over the last local frame and
    # stays there; every index outside [0, Tl] reads it.
    padded = torch.cat([local, local.new_zeros(1, p)], dim=0)
    inside = (i0 >= 0) & (i0 < tl)
    lo = torch.where(inside, i0, tl)
    hi = torch.where(inside, (i0 + 1).clamp(max=tl), tl)
    return padded[lo] * (1 - w) + padded[hi] * w


@dataclass
class VideoBatch:
    """Visual features of a batch, aligned to the codec's frame rate.

    Attributes:
        global_feats: [b, global frames, g] global embeddings at ``global_fps``, from time 0.
        global_mask: [b, global frames] True where a global frame exists.
        local: [b, codec frames, p] local change signal at the codec frame rate, from time 0
            (zero past the end of each video).
        present: [b] True for samples that have a video (False: null video).
        global_fps: rate of the global tokens.
        frame_rate: codec frame rate the local signal is sampled at.
    """

    global_feats: torch.Tensor
    global_mask: torch.Tensor
    local: torch.Tensor
    present: torch.Tensor
    global_fps: float
    frame_rate: float

    @property
    def size(self) -> int:
        return int(self.present.shape[0])

    @classmethod
    def from_features(cls, features: Sequence, frame_rate: float, num_frames: int | None = None,
                      global_dim: int | None = None, local_dim: int | None = None) -> "VideoBatch":
        """Batches :class:`~vidmusician.video.features.VideoFeatures` (``None`` = null video).

        Args:
            features: one entry per sample; ``None`` for a sample without video.
            frame_rate: codec frame rate to resample the local signal to.
            num_frames: codec frames to cover (default: the longest video).
            global_dim, local_dim: widths, needed only when every entry is ``None``.
        """
        real = [f for f in features if f is not None]
        for i, f in enumerate(features):
            if f is not None and not isinstance(f, VideoFeatures):
                raise ConfigError(f"video {i} of the batch: expected VideoFeatures or None, got {type(f).__name__}")
        for f in real:
            f.check()  # made valid, but a tensor may have been changed in place since
        if real:
            global_fps = real[0].global_fps
            if any(abs(f.global_fps - global_fps) > 1e-9 for f in real):
                raise ConfigError("all videos of a batch must share one global_fps")
            global_dim = real[0].global_feats.shape[1]
            local_dim = real[0].local_feats.shape[1]
            for i, f in enumerate(features):
                widths = (f.global_feats.shape[1], f.local_feats.shape[1]) if f is not None else None
                if widths not in (None, (global_dim, local_dim)):
                    raise ConfigError(f"video {i} of the batch has features of widths {widths} (global, local), "
                                      f"an earlier one {(global_dim, local_dim)}; extract every video with one encoder")
        else:
            global_fps = 1.0
            if global_dim is None or local_dim is None:
                raise ConfigError("a batch of null videos needs global_dim and local_dim")
        if num_frames is None:
            num_frames = max([frames_covering(f.duration, frame_rate) for f in real] or [1])
        tg = max([f.global_feats.shape[0] for f in real] or [1])
        B = len(features)
        g = torch.zeros(B, tg, global_dim)
        gm = torch.zeros(B, tg, dtype=torch.bool)
        loc = torch.zeros(B, num_frames, local_dim)
        present = torch.zeros(B, dtype=torch.bool)
        for i, f in enumerate(features):
            if f is None:
                continue
            n = f.global_feats.shape[0]
            g[i, :n] = f.global_feats.float()
            gm[i, :n] = True
            loc[i] = resample_local(f.local_feats.float(), f.local_fps, frame_rate, num_frames)
            present[i] = True
        return cls(g, gm, loc, present, float(global_fps), float(frame_rate))

    def to(self, device) -> "VideoBatch":
        return VideoBatch(self.global_feats.to(device), self.global_mask.to(device), self.local.to(device),
                          self.present.to(device), self.global_fps, self.frame_rate)


class VideoContext:
    """Per-call video state shared by the wrapper layers of one model.

    ``batch`` and ``frame_offset`` are set by the caller; :meth:`begin_forward`
    runs before every transformer forward. What depends only on the video and the
    model's batch layout (which rows carry video, the window's key mask) is kept
    until the video or the layout changes; what depends on adapter weights (the
    visual memory, the in-attention states) is made fresh for every forward, or
    cached by the streaming modules for the length of one generation.
    """

    def __init__(self, max_global_tokens: int):
        self.max_global_tokens = max_global_tokens
        self.batch: VideoBatch | None = None
        self.frame_offset = 0
        self.frames: int | None = None
        self.branches: tuple[bool, ...] | None = None
        self.window_id = 0  # changes whenever the video, offset or row layout changes
        self._reset_layout()
        self._begin(0, 0, None)

    def _reset_layout(self):
        self.window_id += 1
        self._layout_key = None
        self.rows: torch.Tensor | None = None  # [n] rows of the model batch that carry video; None: none do
        self.row_span: tuple[int, int] | None = None  # (start, stop) when those rows are contiguous
        self._window_mask = None

    def _begin(self, position: int, steps: int, inputs):
        self.position = position  # first sequence step of this forward
        self.steps = steps
        self._inputs = inputs
        self._memory = None
        self._rhythm = None

    def set(self, batch: VideoBatch | None, frame_offset: int = 0, branches: tuple[bool, ...] | None = None,
            frames: int | None = None):
        """Conditions the following forwards on ``batch``.

        Args:
            batch: the video of each sample (None: no video, the base model).
            frame_offset: codec frame of the video that sequence step 0 reads.
            frames: the window's length in codec frames: its memory is the global
                tokens of its own stretch of video (at most ``max_global_tokens``), as
                a training window's is. None: ``max_global_tokens`` from ``frame_offset``.
            branches: the model batch's row layout: one flag per block of
                ``batch.size`` rows, True where the block carries the video (e.g.
                ``(True, False, False)`` for guidance's ``[text+video; text; null]``).
                None: audiocraft's own batches, told apart by their size: one row
                per sample (video), or ``[cond; uncond]`` (video; null).
        """
        self.batch = batch
        self.frame_offset = int(frame_offset)
        self.frames = None if frames is None else int(frames)
        self.branches = None if branches is None else tuple(bool(b) for b in branches)
        self._reset_layout()
        self._begin(0, 0, None)

    def begin_forward(self, model_batch: int, position: int, steps: int, device, inputs):
        """Prepares the shared per-forward state; called by a hook on the transformer.

        Args:
            inputs: the adapters' shared inputs (visual memory and in-attention chain).
        """
        self._begin(int(position), int(steps), inputs)
        if self.batch is None:
            return
        if self._layout_key != (model_batch, device):
            self._reset_layout()
            self._layout_key = (model_batch, device)
            self._set_rows(model_batch, device)

    def _set_rows(self, model_batch: int, device):
        B = self.batch.size
        branches = self.branches
        if branches is None:
            # audiocraft's own batches: the samples alone, or classifier-free guidance's
            # [cond; uncond], whose unconditional half gets the null video (delta 0).
            branches = {B: (True,), 2 * B: (True, False)}.get(model_batch, ())
        if model_batch != len(branches) * B:
            self._layout_key = None
            raise ConfigError(f"the video batch has {B} samples but the model runs {model_batch} rows"
                              + (f" in {len(branches)} branches" if self.branches else "")
                              + "; set one video (or None) per sample")
        absent = torch.zeros_like(self.batch.present)
        present = torch.cat([self.batch.present if video else absent for video in branches])
        rows = present.nonzero().flatten().tolist()
        if not rows:
            return
        self.rows = torch.tensor(rows, device=device)
        if rows == list(range(rows[0], rows[-1] + 1)):
            self.row_span = (rows[0], rows[-1] + 1)

    def apply_to_video_rows(self, x: torch.Tensor, adapt: Callable[[torch.Tensor, bool], torch.Tensor],
                            writable: bool) -> torch.Tensor:
        """``x`` with ``adapt`` applied to the rows that carry video, the other rows untouched.

        The one way the adapters reach the hidden states, whatever the batch: one row
        per sample, CFG's ``[cond; uncond]`` (video in the first half), guidance's
        branches, null videos anywhere; a full forward or one streaming step. Rows that
        carry no video keep their values bit for bit. How the rows are taken is a
        matter of speed only:

        - contiguous rows (``row_span``) are a view of ``x``, adapted where they lie
          when ``writable``, else joined with the other rows into a new tensor;
        - scattered rows are gathered into a copy (which the adapters may update in
          place whenever autograd is off) and scattered back, into ``x`` itself when
          ``writable``.

        Args:
            x: [b, s, d] hidden states of the model batch.
            adapt: ``adapt(rows, in_place) -> rows`` on [n, s, d]; with ``in_place`` it
                may write into ``rows`` (returning a new tensor only where a dtype
                conversion made one).
            writable: ``x`` may be updated in place: autograd is off and nothing but
                the transformer holds ``x``.

        Returns:
            [b, s, d]: ``x`` itself when ``writable``, else a new tensor (or ``x``
            when no row carries video).
        """
        if self.rows is None:
            return x
        if self.row_span is not None:
            start, stop = self.row_span
            rows = x[start:stop]
            if not writable:
                return torch.cat([x[:start], adapt(rows, False), x[stop:]])
            out = adapt(rows, True)
            if out is not rows:  # a dtype conversion made a copy
                rows.copy_(out)
            return x
        out = adapt(x.index_select(0, self.rows), not torch.is_grad_enabled())
        return x.index_copy_(0, self.rows, out) if writable else x.index_copy(0, self.rows, out)

    def video_rows(self) -> torch.Tensor:
        """[n]: the sample of the video batch each model row that carries video reads."""
        return self.rows % self.batch.size

    def local(self, start: int, steps: int, lags: Sequence[int] = (0,)) -> torch.Tensor:
        """[n, steps, p * len(lags)]: the local signal of codec frames ``[start, start + steps)``.

        Block ``j`` of a row holds the signal ``lags[j] >= 0`` codec frames earlier, read
        from the whole video whatever the window. Before the video the signal is its first
        frame's (where a video starts, its earlier frames read as the same: the start is no
        flash), past its end zero (no change).
        """
        lead = max(lags)
        # Slice time before rows: a long video's full signal is never copied per step.
        first = max(start - lead, 0)
        chunk = self.batch.local[:, first:start + steps]
        rows = self.video_rows().to(chunk.device)
        chunk = chunk[rows]
        # Frames [start - lead, start + steps): the first frame's before the video, zeros past its end.
        before = first - (start - lead)
        chunk = F.pad(chunk, (0, 0, 0, lead + steps - before - chunk.shape[1]))
        if before:
            chunk = torch.cat([self.batch.local[rows, :1].expand(-1, before, -1), chunk], dim=1)
        return torch.cat([chunk[:, lead - lag:lead - lag + steps] for lag in lags], dim=-1)

    def global_window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([n, t, g] tokens, [n, t] mask): the global tokens of this window's stretch of video."""
        b = self.batch
        # The global frame nearest the window's start (half way: the later one, whatever the parity).
        start = math.floor(self.frame_offset / b.frame_rate * b.global_fps + 0.5)
        count = self.max_global_tokens
        if self.frames is not None:
            count = min(count, frames_covering(self.frames / b.frame_rate, b.global_fps))
        stop = start + count
        idx = self.video_rows().to(b.global_feats.device)
        tokens, mask = b.global_feats[:, start:stop][idx], b.global_mask[:, start:stop][idx]
        if tokens.shape[1] == 0:  # window entirely past the video's end
            tokens = b.global_feats[idx, :1] * 0
            mask = torch.zeros(len(idx), 1, dtype=torch.bool, device=mask.device)
        return tokens, mask

    def memory_mask(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(key mask [n, t], has_frame [n]) of this window, on the model's device."""
        if self._window_mask is None:
            mask = self.global_window()[1]
            has_frame = mask.any(dim=1)
            # A row with no frame in this window would make attention NaN: let it
            # see its first (zero) token; the cross-attention drops its output.
            mask = mask.clone()
            mask[:, 0] |= ~has_frame
            device = self._layout_key[1]
            self._window_mask = (mask.to(device), has_frame.to(device))
        return self._window_mask

    def memory(self) -> torch.Tensor:
        """[n, t, m]: the projected visual memory of this window, computed once per forward."""
        if self._memory is None:
            # Once per forward; while streaming the layers keep what they derive from it
            # for the whole window, so a T5 pass runs once per window, not per step.
            self._memory = self._inputs.memory(self.global_window()[0], self.memory_mask()[0])
        return self._memory

    def rhythm(self, slot: int) -> torch.Tensor:
        """[n, s, d]: r_j of the ``slot``-th in-attention layer for this forward's steps."""
        if self._rhythm is None:
            self._rhythm = self._inputs.rhythm_states(self)
        return self._rhythm[slot]
