"""The paper's semantic encoder: CLIP tokens through the backbone's own T5, tuned with LoRA.

``F_S = P(T5_LoRA(E(V)))``: the embedding manager ``E`` maps each global CLIP
embedding (one per second) into T5's input-embedding space (visual
pseudo-tokens), the backbone's frozen T5 encoder with LoRA (peft) contextualizes
them, and the projector ``P`` maps them to the memory the cross-attentions read.

The text path is never touched. The LoRA layers are injected into a second
*module tree* over the same weight tensors as the text conditioner's T5 (no
copy of the weights: the clone's parameters share their storage), so the text
conditioner keeps calling the very modules it called before, bitwise as plain
MusicGen does, and only the visual pseudo-tokens go through the LoRA layers.

Positions: T5 knows only relative positions (a bias on attention scores), so a
token's second within the window would be lost in T5's output. ``E`` adds
learned positions to the pseudo-tokens (T5 sees which second each one is) and
``P`` adds learned positions to its output, after T5, where nothing can wash
them out: the cross-attention's keys always say which second they belong to.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .layers import VisualMemory


def shared_clone(t5):
    """A second ``T5EncoderModel`` module tree over ``t5``'s own weight tensors (no copy), frozen, in eval mode."""
    with torch.device("meta"):
        clone = type(t5)(t5.config)
    # assign=True makes the clone's parameters the state dict's tensors, which share
    # storage with t5's: one set of weights in memory, two module trees.
    clone.load_state_dict(t5.state_dict(), assign=True)
    return clone.eval().requires_grad_(False)


def lora_targets(t5) -> list[str]:
    """Names of the linear projections of every T5 attention block (q, k, v, o), found by module type."""
    from transformers.models.t5.modeling_t5 import T5Attention

    return [f"{name}.{child}" for name, module in t5.named_modules() if isinstance(module, T5Attention)
            for child, sub in module.named_children() if isinstance(sub, nn.Linear)]


class T5SemanticEncoder(nn.Module):
    """``P(T5_LoRA(E(tokens)))``: global visual tokens -> the visual memory.

    Args:
        global_dim: width of the global visual embeddings (CLIP image embeddings).
        memory_dim: width of the memory.
        max_tokens: global tokens per window (length of both position tables).
        t5: the backbone's ``T5EncoderModel`` (frozen; shared, not copied).
        rank, alpha: LoRA rank and alpha (scaling ``alpha / rank``).
        autocast: the text conditioner's autocast context, so the video runs through
            T5 in the precision the text does (T5 overflows in float16).

    Attributes:
        manager: ``E``, LayerNorm + Linear into T5's input space + learned positions.
        lora: the LoRA weights, by T5 module name (dots as '_'), registered here so they
            are saved, moved and trained with the other adapters.
        projector: ``P``, LayerNorm + Linear to ``memory_dim`` + learned positions.
    """

    def __init__(self, global_dim: int, memory_dim: int, max_tokens: int, t5, rank: int, alpha: float,
                 autocast=None):
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        width = t5.config.d_model
        self.manager = VisualMemory(global_dim, width, max_tokens)
        clone = shared_clone(t5)
        # LoRA's B starts at zero (peft's default): the clone starts as the frozen T5.
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                            target_modules=lora_targets(clone))
        inject_adapter_in_model(config, clone)
        clone.eval()
        # Plain attributes: the frozen T5 stays out of the LM's module tree (as audiocraft
        # keeps it), so its weights are neither saved with the adapters nor cast or moved.
        self.__dict__["t5"] = clone
        self.__dict__["autocast"] = autocast if autocast is not None else contextlib.nullcontext()
        self.lora = nn.ModuleDict({
            name.replace(".", "_"): nn.ModuleDict({"lora_A": module.lora_A, "lora_B": module.lora_B})
            for name, module in clone.named_modules() if hasattr(module, "lora_A")})
        self.projector = VisualMemory(width, memory_dim, max_tokens)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [b, t, g], mask [b, t] (True: a frame) -> memory [b, t, m] (letters of :mod:`.layers`)."""
        pseudo = self.manager(tokens)
        if mask is None:
            mask = torch.ones(pseudo.shape[:2], dtype=torch.bool, device=pseudo.device)
        ref = next(self.t5.parameters())
        with self.autocast:
            hidden = self.t5(inputs_embeds=pseudo.to(ref.device, ref.dtype),
                             attention_mask=mask.to(ref.device).long()).last_hidden_state
        ref = self.projector.proj.weight
        return self.projector(hidden.to(ref.device, ref.dtype))
