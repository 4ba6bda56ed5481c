"""The training objective: MusicGen's loss through the adapted model, and its measures.

:class:`Objective` is the training forward as one module (what DDP wraps): masked
cross-entropy per codebook of ``LMModel.compute_predictions``, with the targets
``plausible_targets`` leaves out. :func:`codebook_weights` weighs the codebooks'
mean losses into the number the gradient descends; :func:`holdout_loss` measures
a dataset on every target, the number the log compares across runs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .dataset import Collate
from .losses import codebook_losses, coarse_codebooks, loss_mask, plausible_targets
from .recipe import Recipe


class Objective(nn.Module):
    """The training forward as one module, so DDP sees (and syncs) the whole step."""

    def __init__(self, vm, plausible_targets: float = 0.0):
        super().__init__()
        self.lm = vm.lm
        self.__dict__["vm"] = vm  # not a submodule: its LM is registered above
        self.plausible_targets = plausible_targets

    def forward(self, codes, valid, videos, texts, filtered: bool = True, every_target: bool = False):
        """Per-codebook loss sums and counts; ``filtered``: the fine codebooks' targets the frozen
        base rules out count zero (:attr:`Recipe.plausible_targets`), the counts stay every valid position.
        ``every_target``: a third result, the sums over every target (what the holdout loss counts),
        from the same logits without gradients, so the log can show a loss comparable to the holdout's."""
        from audiocraft.modules.conditioners import ConditioningAttributes

        conditions = [ConditioningAttributes(text={"description": t}) for t in texts]
        keep, tensors = None, None
        if filtered and self.plausible_targets:
            # The text is encoded once for both forwards (the base's and the adapted model's).
            provider = self.lm.condition_provider
            tensors = provider(provider.tokenize(conditions))
            with torch.no_grad():
                base = self.vm.compute_predictions(codes, None, condition_tensors=tensors)  # no video: the base
                keep = plausible_targets(base.logits, codes, self.plausible_targets, coarse_codebooks(self.lm))
                del base
        out = self.vm.compute_predictions(codes, videos, conditions, condition_tensors=tensors)
        mask = out.mask & loss_mask(self.lm, valid)
        if keep is None:
            sums, counts = codebook_losses(out.logits, codes, mask)
            return (sums, counts, sums.detach()) if every_target else (sums, counts)
        sums, _ = codebook_losses(out.logits, codes, mask & keep)
        if not every_target:
            return sums, mask.sum(dim=(0, 2))
        with torch.no_grad():
            every, _ = codebook_losses(out.logits.detach(), codes, mask)
        return sums, mask.sum(dim=(0, 2)), every


def codebook_weights(recipe: Recipe, num_codebooks: int) -> torch.Tensor:
    """[K] weights of the codebooks' mean losses, summing to 1 (equal unless the recipe says)."""
    if recipe.codebook_weights is None:
        return torch.full((num_codebooks,), 1.0 / num_codebooks)
    if len(recipe.codebook_weights) != num_codebooks:
        raise ConfigError(f"recipe: codebook_weights has {len(recipe.codebook_weights)} weights, the backbone "
                          f"{num_codebooks} codebooks; give one weight per codebook")
    w = torch.tensor(recipe.codebook_weights, dtype=torch.float32)
    return w / w.sum()


@torch.no_grad()
def holdout_loss(objective: Objective, dataset, accelerator, batch_size: int, max_windows: int) -> float:
    """Mean over codebooks of the per-token cross-entropy on (this process's share of) a dataset."""
    rank, world = accelerator.process_index, accelerator.num_processes
    indices = list(range(min(len(dataset), max_windows)))[rank::world]
    # Its own generator: iterating a DataLoader draws a seed, which would otherwise come from
    # torch's global RNG, the training's (and eval_every may change on resume).
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         collate_fn=Collate(objective.vm.config.frame_rate),
                                         generator=torch.Generator())
    sums = torch.zeros(objective.vm.lm.num_codebooks, device=accelerator.device, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    objective.vm.eval()
    for batch in loader:
        batch = batch.to(accelerator.device)
        with accelerator.autocast():
            s, c = objective(batch.codes, batch.valid, batch.videos, batch.texts, filtered=False)
        sums += s.double()
        counts += c.double()
    objective.vm.train()
    sums, counts = accelerator.reduce(sums, "sum"), accelerator.reduce(counts, "sum")
    return float((sums / counts.clamp(min=1)).mean())
