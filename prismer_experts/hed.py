"""A HED-style edge network: five VGG-like stages, each with a 1×1 side output; the edge map
is the sigmoid of the side outputs' mean, upsampled to the image (Xie & Tu, "Holistically-
Nested Edge Detection", 2015).

The layer names follow the Apache-2.0 ``ControlNetHED_Apache2`` annotator of ControlNet, so
its published state dict (``ControlNetHED.pth``, lllyasviel/Annotators) loads as is. Input:
RGB in 0..255, N×3×H×W; output: edge probability N×1×H×W.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Stage(nn.Module):
    """``layers`` 3×3 conv + ReLU, optionally after a 2× max-pool, with a 1-channel side output."""

    def __init__(self, channels_in: int, channels: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in if i == 0 else channels, channels, kernel_size=3, padding=1) for i in range(layers)
        )
        self.projection = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor, downsample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if downsample:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HedNet(nn.Module):
    """Edge probability of every pixel; widths and depths of the published HED annotator."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # a learned mean, subtracted from the input
        self.block1 = Stage(3, 64, 2)
        self.block2 = Stage(64, 128, 2)
        self.block3 = Stage(128, 256, 3)
        self.block4 = Stage(256, 512, 3)
        self.block5 = Stage(512, 512, 3)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb - self.norm
        sides = []
        for i, block in enumerate((self.block1, self.block2, self.block3, self.block4, self.block5)):
            x, side = block(x, downsample=i > 0)
            sides.append(F.interpolate(side, size=rgb.shape[-2:], mode="bilinear", align_corners=False))
        return torch.sigmoid(torch.stack(sides).mean(dim=0))
