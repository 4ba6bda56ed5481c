"""MusicGen's training loss: its home is :mod:`vidmusician.losses` (below its users: training, test backbones).

Kept so that ``vidmusician.training.losses`` stays importable.
"""

from ..losses import codebook_losses, coarse_codebooks, loss_mask, plausible_targets  # noqa: F401
