"""A static-cache decode engine for audiocraft's LMModel: one window's sampling loop, fast.

audiocraft's streaming decode (what :func:`~vidmusician.generation.guidance.sample_window`
drives) grows every layer's key/value cache with ``torch.cat``, re-projects the text
for the cross-attention at every step, and runs hundreds of small kernels with Python
between them. :class:`DecodeEngine` computes the same model from audiocraft's own
weight tensors (nothing is copied), with:

- a key/value cache allocated once per batch shape, as long as the longest window;
- the text cross-attention's keys and values, and the adapters' folded visual memory,
  computed once per window;
- the in-attention input read at a step index held on the device;
- guidance's branches as one batch, their combination and the sampling (temperature,
  top-k, top-p, greedy) inside the step, and the delay pattern's bookkeeping (which
  positions are empty, which hold the prompt) on the device: a step reads and writes
  device tensors only, and never waits for the host.

On CUDA the whole step is captured as one CUDA graph and replayed
(:mod:`vidmusician.generation.engine_graph`); on the CPU it runs eagerly. Numbers differ
from the reference path in their last bits only (attention over a preallocated cache,
the in-attention chain one step at a time): greedy decoding gives the same tokens, and
sampling draws its random numbers exactly as ``torch.multinomial`` does (the same
tokens unless two candidates' rounding differs at the draw).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..adapter.context import VideoContext
from .engine_graph import SYNC_EVERY, StepGraph
from .engine_sampling import sample_token
from .engine_shapes import pad_folded, text_slots
from .guidance import GenerationParams, Guidance

__all__ = ["DecodeEngine", "base_layers"]

UNKNOWN = -1  # codes not generated yet (as in sample_window)

def base_layers(lm) -> list:
    """The LM's audiocraft transformer layers (an adapted layer's own base layer)."""
    return [getattr(layer, "base_layer", layer) for layer in lm.transformer.layers]


@dataclass
class _Window:
    """What a window's steps read, computed once per window."""

    cross: list  # per layer (keys, values) [rows, h, text slots, c], or None
    text: torch.Tensor  # [1, 1, 1, text slots] True at the text's tokens, False at the slots past them
    video: "_VideoWindow | None"
    adapted: dict  # adapted layers (the wiring's wrappers) by index


@dataclass
class _VideoWindow:
    """The adapters' inputs for one window: per semantic layer the folded memory, the local signal."""

    rows: tuple[int, int]  # the model rows of the branch that carries the video
    present: torch.Tensor  # [B, 1, 1] True where the sample has a video
    folded: dict  # layer index -> FoldedMemory (padded to max_global_tokens)
    local: torch.Tensor | None  # [B, max_len, p] the local signal of steps 0.. of the window


class DecodeEngine:
    """Decodes windows of one batch shape with a static key/value cache.

    Args:
        lm: audiocraft's LMModel (adapted or not), in eval mode; its weights are read
            in place at every step.
        batch: samples per call (B).
        branches: guidance branches (the model batch is ``branches * B`` rows).
        max_len: the longest window's sequence steps (the cache's length).
        device: the LM's device.
    """

    def __init__(self, lm, batch: int, branches: int, max_len: int, device):
        # A weak reference: engines are kept per LM (engine_select), and must not keep it alive.
        self._lm = weakref.ref(lm)
        self.batch, self.branches, self.max_len, self.device = batch, branches, max_len, device
        # audiocraft comes with the model (importing the generation modules stays light).
        from audiocraft.modules.transformer import create_sin_embedding

        self._sin_embedding = create_sin_embedding
        self.rows = batch * branches
        K = lm.num_codebooks
        first = base_layers(lm)[0].self_attn
        self.heads = first.num_heads
        self.dim = first.embed_dim
        # Static state, read and written by every step in place (the graph's inputs).
        self.sequence = torch.full((batch, K, max_len), UNKNOWN, dtype=torch.long, device=device)
        self.pattern_mask = torch.zeros(K, max_len, dtype=torch.bool, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # the step's input position
        self.cache: list | None = None  # per layer (keys, values) [rows, h, max_len, c]
        self.window: _Window | None = None
        self.graph = StepGraph.for_engine(self)  # None: eager steps (the CPU)

    @property
    def lm(self):
        return self._lm()

    # -- one window ----------------------------------------------------------

    @torch.no_grad()
    def sample_window(self, prompt: torch.Tensor, conditions: dict, guidance: Guidance, max_gen_len: int,
                      params: GenerationParams, videos=None, frame_offset: int = 0, max_global_tokens: int = 0,
                      callback=None, row_seeds=None) -> torch.Tensor:
        """Codes of one window, its prompt included: what :func:`sample_window` computes.

        Args:
            prompt: ``[B, K, T]`` codes the window starts with (T may be 0).
            conditions: the encoded text conditions of every branch's rows.
            guidance: the branches and their coefficients.
            max_gen_len: codec frames of the window, prompt included.
            params: sampling parameters.
            videos: the :class:`VideoBatch` the adapters read (None: no video).
            frame_offset: codec frame of the video at the window's first step.
            max_global_tokens: the adapters' memory length (the longest run of global tokens).
            callback: called after every step.
            row_seeds: a :class:`~vidmusician.generation.row_seeds.RowSeeds` samples each row
                under its own RNG state (the same draws as the reference path's); sampled
                steps then run eagerly, as swapping generator states is not part of a CUDA
                graph (greedy steps draw nothing, and replay the graph).

        Returns:
            ``[B, K, max_gen_len]`` codes.
        """
        lm = self.lm
        assert not lm.training, "generation runs in eval mode"
        B, K, T = prompt.shape
        assert B == self.batch and guidance.branches == self.branches, (B, guidance.branches)
        pattern = lm.pattern_provider.get_pattern(max_gen_len)
        codes = torch.full((B, K, max_gen_len), UNKNOWN, dtype=torch.long, device=self.device)
        codes[..., :T] = prompt
        sequence, _, mask = pattern.build_pattern_sequence(codes, lm.special_token_id)
        S = sequence.shape[-1]
        assert S <= self.max_len, (S, self.max_len)
        self.sequence[..., :S] = sequence
        self.pattern_mask[:, :S] = mask
        adapted = {i: layer for i, layer in enumerate(lm.transformer.layers) if hasattr(layer, "base_layer")}
        video = self._video_window(videos, frame_offset, max_gen_len, max_global_tokens, guidance, adapted)
        self.window = _Window(*self._cross_keys(conditions), video, adapted)
        self._prepare_cache()
        if not params.samples:
            row_seeds = None  # greedy: nothing to draw
        graph = self.graph if row_seeds is None else None
        if graph is not None:
            self.window = graph.load_window(self.window)
        first = pattern.get_first_step_with_timesteps(T)
        if first > 1:  # the prompt's steps but the last fill the cache; the last is the first step's input
            self._forward(self.sequence[..., :first - 1].repeat(self.branches, 1, 1), 0, first - 1)
        self.position.fill_(first - 1)
        step, graph = self._step_function(guidance, params, first - 1, graph, row_seeds)
        for done, _ in enumerate(range(first, S), 1):
            step()
            if callback is not None:
                if graph is not None and done % SYNC_EVERY == 0:
                    graph.synchronize()  # the replays queued so far have run: the count is true
                callback()
        codes, _, _ = pattern.revert_pattern_sequence(self.sequence[..., :S].contiguous(), special_token=UNKNOWN)
        codes = codes[..., :max_gen_len]
        assert (codes != UNKNOWN).all()
        return codes

    def _step_function(self, guidance: Guidance, params: GenerationParams, position: int, graph, row_seeds):
        """(the step to run from ``position``, the graph it replays): a replay of ``graph``
        (CUDA), else an eager step and None.

        A step the device cannot capture runs eagerly, in this window and the next ones,
        with a one-line warning: slower music, not none.
        """
        if graph is not None:
            try:
                return graph.step(guidance, params), graph
            except RuntimeError as error:
                self.graph = None
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                warnings.warn(f"the decode step could not be captured as a CUDA graph ({reason}); "
                              f"it runs eagerly, slower", stacklevel=4)
        host = {"position": position}  # eager: the host knows the position too, and slices the cache

        def step():
            self.step(guidance, params, length=host["position"] + 1, row_seeds=row_seeds)
            host["position"] += 1
        return step, None

    def step(self, guidance: Guidance, params: GenerationParams, length: int | None = None,
             row_seeds=None) -> None:
        """One decode step on device tensors only: forward, guidance, sampling, bookkeeping.

        Reads the tokens at ``position``, writes the sampled ones at ``position + 1``
        (prompt codes stay, the pattern's empty positions get the special token) and
        advances ``position``.

        Args:
            length: keys to attend to (``position + 1``) when the host knows it (eager);
                None: the whole cache, masked past ``position`` (a captured graph).
            row_seeds: per-row RNG states to sample under (eager only); None: torch's RNG.
        """
        lm, B, pos = self.lm, self.batch, self.position
        tokens = self.sequence.index_select(2, pos).repeat(self.branches, 1, 1)
        logits = self._forward(tokens, pos, length)
        # The plausibility filter acts on the samples with a video only (the window's own tensor, so a graph reads it).
        filtered = self.window.video.present if self.window.video is not None else None
        token = sample_token(guidance.combine(logits[:, :, -1], B, filtered), params, row_seeds)  # [B, K, 1]
        after = pos + 1
        valid = self.pattern_mask.index_select(1, after)  # [K, 1]
        token = torch.where(valid, token, torch.full_like(token, lm.special_token_id))
        current = self.sequence.index_select(2, after)
        self.sequence.index_copy_(2, after, torch.where(current == UNKNOWN, token, current))
        pos.add_(1)

    # -- the model -----------------------------------------------------------

    def _forward(self, tokens: torch.Tensor, start, length: int | None) -> torch.Tensor:
        """Logits ``[rows, K, s, card]`` of ``tokens`` ``[rows, K, s]`` at positions ``start...``.

        ``start`` is an int (0, the prompt's steps, causal among themselves) or the
        device position (one step). Keys and values go into the cache at their positions.
        """
        lm = self.lm
        rows, K, steps = tokens.shape
        x = sum([lm.emb[k](tokens[:, k]) for k in range(K)])
        offsets = start.expand(rows) if torch.is_tensor(start) else torch.full((rows,), start, device=self.device)
        positions = torch.arange(steps, device=self.device).view(1, -1, 1) + offsets.view(-1, 1, 1)
        transformer = lm.transformer
        pos_emb = self._sin_embedding(positions, x.shape[-1], max_period=transformer.max_period, dtype=x.dtype)
        x = x + transformer.positional_scale * pos_emb
        if length is None:  # the whole cache, keys past the step masked out
            keys = torch.arange(self.max_len, device=self.device)
            mask = (keys <= start).view(1, 1, 1, -1)
            length = self.max_len
        else:
            mask = None
        rhythm = self._rhythm_states(positions[0, :, 0]) if self.window.video is not None else None
        adapted = self.window.adapted
        for i, layer in enumerate(lm.transformer.layers):
            if rhythm is not None and i in adapted:
                x = self._adapt(adapted[i], x, rhythm)
            x = self._layer(i, getattr(layer, "base_layer", layer), x, positions[0, :, 0], length, mask)
        if lm.out_norm:
            x = lm.out_norm(x)
        return torch.stack([lm.linears[k](x) for k in range(K)], dim=1)

    def _prepare_cache(self) -> None:
        """The key/value cache, in the dtype the attention computes in now (autocast's on a GPU).

        Allocated at the first window; again when that dtype changes (a window under
        another autocast state), and then the captured steps, which read the old cache, go too.
        """
        lm = self.lm
        proj = base_layers(lm)[0].self_attn
        x = torch.zeros(1, 1, self.dim, dtype=lm.emb[0].weight.dtype, device=self.device)
        dtype = F.linear(x, proj.in_proj_weight, proj.in_proj_bias).dtype
        if self.cache is not None and self.cache[0][0].dtype == dtype:
            return
        H, C = self.heads, self.dim // self.heads
        self.cache = None  # the old one goes before the new one is allocated
        self.cache = [(torch.zeros(self.rows, H, self.max_len, C, dtype=dtype, device=self.device),
                       torch.zeros(self.rows, H, self.max_len, C, dtype=dtype, device=self.device))
                      for _ in base_layers(lm)]
        if self.graph is not None:
            self.graph.reset()

    def _layer(self, i: int, layer, x: torch.Tensor, positions: torch.Tensor, length: int, mask):
        """One of audiocraft's pre-norm ``StreamingTransformerLayer``s, operation for operation."""
        b, s, d = x.shape
        H = self.heads
        sa = layer.self_attn
        h = layer.norm1(x)
        qkv = F.linear(h, sa.in_proj_weight, sa.in_proj_bias)
        q, k, v = qkv.view(b, s, 3, H, d // H).permute(0, 3, 2, 1, 4).unbind(2)  # [b, h, s, c] each
        keys, values = self.cache[i]
        keys.index_copy_(2, positions, k)
        values.index_copy_(2, positions, v)
        k, v = keys[:, :, :length], values[:, :, :length]
        causal = mask is None and s > 1  # the prompt's steps, from position 0
        x = x + layer.layer_scale_1(sa.out_proj(self._attend(sa, q, k, v, mask, causal, h.dtype)))
        if layer.cross_attention is not None:
            ca = layer.cross_attention
            h = layer.norm_cross(x)
            q = F.linear(h, ca.in_proj_weight[:d], None if ca.in_proj_bias is None else ca.in_proj_bias[:d])
            ck, cv = self.window.cross[i]
            q = q.view(b, s, H, d // H).transpose(1, 2)
            x = x + layer.layer_scale_cross(ca.out_proj(self._attend(ca, q, ck, cv, self.window.text, False, h.dtype)))
        return x + layer.layer_scale_2(layer.linear2(layer.activation(layer.linear1(layer.norm2(x)))))

    @staticmethod
    def _attend(attn, q, k, v, mask, causal: bool, dtype) -> torch.Tensor:
        """[b, h, s, c] queries -> [b, s, h*c], as audiocraft's memory-efficient path computes it."""
        if attn.attention_as_float32:
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal).to(dtype)
        b, h, s, c = out.shape
        return out.transpose(1, 2).reshape(b, s, h * c)

    # -- once per window -----------------------------------------------------

    def _cross_keys(self, conditions: dict) -> tuple[list, torch.Tensor]:
        """Per layer the text cross-attention's (keys, values), projected once for the window,
        in :func:`text_slots` slots, and the mask of the slots that hold the text.

        The slots past the text are masked out of the attention, so a window's shape (and a
        captured step) does not change with the text's length in tokens.
        """
        lm = self.lm
        _, source = lm.fuser(torch.zeros(self.rows, 1, self.dim, device=self.device), conditions)
        tokens = source.shape[1]
        slots = text_slots(tokens)
        source = F.pad(source, (0, 0, 0, slots - tokens))
        text = (torch.arange(slots, device=self.device) < tokens).view(1, 1, 1, slots)
        out = []
        for layer in base_layers(lm):
            ca = layer.cross_attention
            if ca is None:
                out.append(None)
                continue
            d, H = self.dim, self.heads
            w, bias = ca.in_proj_weight, ca.in_proj_bias
            k = F.linear(source, w[d:2 * d], None if bias is None else bias[d:2 * d])
            v = F.linear(source, w[2 * d:], None if bias is None else bias[2 * d:])
            b, t, _ = k.shape
            out.append(tuple(z.view(b, t, H, d // H).transpose(1, 2) for z in (k, v)))
        return out, text

    def _video_window(self, videos, frame_offset: int, frames: int, max_tokens: int, guidance: Guidance,
                      adapted: dict) -> _VideoWindow | None:
        """The adapters' inputs of one window (None: no adapter acts on any row)."""
        lm = self.lm
        if videos is None or not bool(videos.present.any()) or not any(guidance.video) or not adapted:
            return None
        branch = guidance.video.index(True)
        assert guidance.video.count(True) == 1, "the video rides in one branch"
        inputs = lm.video_inputs
        # Every sample's rows of the video branch take the adapters; a sample without video
        # keeps its own values (torch.where at each layer), so shapes do not depend on who has one.
        context = VideoContext(max_tokens)
        context.set(replace(videos, present=torch.ones_like(videos.present)), frame_offset, branches=(True,),
                    frames=frames)
        context.begin_forward(self.batch, 0, 0, self.device, inputs)
        folded = {}
        for i, layer in adapted.items():
            semantic = layer._modules.get("semantic")
            if semantic is not None:
                folded[i] = pad_folded(semantic.prepare(context.memory(), *context.memory_mask()),
                                       semantic.heads, max_tokens)
        local = None
        if inputs.rhythm_in is not None:
            ref = inputs.rhythm_in.proj.weight
            local = context.local(frame_offset, self.max_len, inputs.rhythm_in.lags).to(ref.device, ref.dtype)
        present = videos.present.to(self.device).view(-1, 1, 1)
        return _VideoWindow((branch * self.batch, (branch + 1) * self.batch), present, folded, local)

    # -- adapters inside the step --------------------------------------------

    def _rhythm_states(self, positions: torch.Tensor) -> list | None:
        """``[r_1, r_2, ...]`` of the in-attention chain at these steps, each [B, s, d]."""
        video = self.window.video
        if video.local is None:
            return []
        inputs = self.lm.video_inputs
        r = inputs.rhythm_in(video.local.index_select(1, positions))
        states = []
        for linear in inputs.chain:
            r = linear(r)
            states.append(r)
        return states

    def _adapt(self, wrapper, x: torch.Tensor, rhythm: list) -> torch.Tensor:
        """``x`` with the wrapper's adapters applied to the video branch's rows that have a video."""
        video = self.window.video
        lo, hi = video.rows
        rows = x[lo:hi]
        modules = wrapper._modules
        semantic, linear = modules.get("semantic"), modules.get("rhythm")
        dtype = (semantic if semantic is not None else linear).dtype
        y = rows.to(dtype, copy=True)  # the rows of samples without video must keep their values
        # As the wrapper computes it: in place past the first layer (x is a fresh output there).
        in_place = wrapper.index > 0 and rows.dtype == dtype
        if linear is not None:
            y = y + rhythm[wrapper.rhythm_slot]
        if semantic is not None:
            y = semantic(y, video.folded[wrapper.index], in_place=in_place)
        adapted = torch.where(video.present, y.to(x.dtype), rows)
        return torch.cat([x[:lo], adapted, x[hi:]]) if self.branches > 1 else adapted
