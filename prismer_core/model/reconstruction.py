"""Pixel reconstruction: a signal of its own for a vision tower trained from scratch.

Trained by the language loss alone, a fresh tower keeps only what the decoder already reads:
on the demo scenes the colour a linear probe finds in its tokens fell from 0.61 to 0.36 of the
shapes within 400 steps, while the decoder was still learning count and position, and the
colour questions stayed at chance (docs/benchmarks.md, issue 13). A linear head that reads every
RGB patch token back into its patch's pixels, pooled to ``size`` × ``size``, makes the tokens
keep what is in the image; its mean squared error is added to the training loss with the
spec's ``reconstruction.weight``. Unmasked, unlike MAE: the aim is to keep, not to pre-train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..specs import ReconstructionSpec


class PixelReconstruction(nn.Module):
    def __init__(self, spec: ReconstructionSpec, width: int) -> None:
        super().__init__()
        self.size = spec.size
        self.head = nn.Linear(width, 3 * spec.size**2)

    def targets(self, rgb: torch.Tensor, grid: int) -> torch.Tensor:
        """Each patch's pixels [B, grid², 3·size²], patches in the tokens' row-major order."""
        pooled = F.adaptive_avg_pool2d(rgb, grid * self.size)  # [B, 3, grid·size, grid·size]
        cells = pooled.unflatten(2, (grid, self.size)).unflatten(4, (grid, self.size))  # [B, 3, gy, sy, gx, sx]
        return cells.permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)

    def forward(self, patch_tokens: torch.Tensor, rgb: torch.Tensor, grid: int) -> torch.Tensor:
        """Mean squared error of the patches read back from ``patch_tokens`` [B, grid², width]."""
        return F.mse_loss(self.head(patch_tokens), self.targets(rgb, grid).to(patch_tokens.dtype))
