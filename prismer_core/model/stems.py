"""One stem per expert: an expert map becomes tokens on a grid 16× coarser.

Dense maps (depth, normals, edges) go through five 3×3 convolutions, the first four with
stride 2. Semantic maps (64-channel label embeddings) are piecewise constant: they are
averaged over 4×4 pixels, projected pixel by pixel (a 1×1 convolution) and max-pooled over
each token's 4×4 cell. They arrive as label ids and a table of label embeddings
(:class:`LabelMap`), and the 4×4 averages are each cell's label shares times the table: the
full-resolution 64-channel map is never made. The max keeps a small labelled region (a
printed word a few pixels high) whole where averaging or strided convolutions blend it into
the background: trained on "what is written" questions alone, the demo model read 77% of the
words after 400 steps with this stem and 14% with a convolution stack (docs/benchmarks.md,
"`make demo`"). Experts with instance maps add a trainable instance embedding to every token
of an instance, in one gather, with no loop.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: Total downsampling of every stem: tokens lie on a grid of image_size / STEM_STRIDE.
STEM_STRIDE = 16
SEMANTIC_POOL = 4


class LabelMap(NamedTuple):
    """A semantic expert's map for a batch: label ids [B, S, S] and each sample's table of label
    embeddings [B, K, C]; the map it stands for is ``table[ids]``, [B, S, S, C]."""

    ids: torch.Tensor
    table: torch.Tensor


def label_cell_means(labels: LabelMap, cell: int) -> torch.Tensor:
    """``avg_pool2d`` of the map ``labels`` stands for, over ``cell``×``cell`` pixels
    (``ceil_mode``: a cell cut by the border averages the pixels it has), as [B, C, h, w]:
    the share of each label in each cell (one scatter-add of ones: unlike ``bincount``, it
    does not wait for the GPU to learn its output size) times the table (one batched matmul)."""
    ids, table = labels
    batch, height, width = ids.shape
    rows = table.shape[1]
    grid_h, grid_w = -(-height // cell), -(-width // cell)
    arange = lambda n: torch.arange(n, device=ids.device)  # noqa: E731
    cells = (arange(height)[:, None] // cell) * grid_w + arange(width)[None, :] // cell  # [S, S]
    slots = (arange(batch).view(-1, 1, 1) * (grid_h * grid_w) + cells) * rows + ids.long()
    flat = slots.flatten()
    counts = torch.zeros(batch * grid_h * grid_w * rows, device=ids.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=counts.dtype))
    counts = counts.view(batch, grid_h * grid_w, rows).to(table.dtype)
    shares = counts / counts.sum(-1, keepdim=True)
    return torch.bmm(shares, table).transpose(1, 2).reshape(batch, -1, grid_h, grid_w)


def stem_grid(image_size: int) -> int:
    """Side of the token grid a stem produces for a square image of ``image_size`` pixels."""
    return -(-image_size // STEM_STRIDE)  # each stride-2 step (and the 4× pools) rounds up


class ExpertStem(nn.Module):
    """Expert map -> tokens. Dense: five 3×3 convolutions (GroupNorm + ReLU between them).
    Semantic: a per-pixel projection max-pooled over each token's cell (see the module doc).

    Dense widths double at every layer, width/16 → width/8 → width/4 → width/2 → width, so
    each of the first four costs about the same and the last, at the token grid, dominates:
    about half the multiply-adds of the reference stems. GroupNorm rather than BatchNorm: no
    running statistics, so training with small or uneven batches and inference agree.
    """

    def __init__(self, in_channels: int, width: int, semantic: bool, instance_slots: int = 0) -> None:
        super().__init__()
        self.semantic = semantic
        if semantic:
            self.projection = nn.Conv2d(in_channels, width, 1)
        else:
            self.convs = conv_stack(in_channels, width)
        self.instance_embedding = nn.Embedding(instance_slots, width) if instance_slots else None
        if self.instance_embedding is not None:
            nn.init.normal_(self.instance_embedding.weight, std=width**-0.5)

    def forward(self, maps: torch.Tensor | LabelMap, instances: torch.Tensor | None = None) -> torch.Tensor:
        """``maps`` [B, C, S, S], or a :class:`LabelMap` for a semantic stem (and ``instances``
        [B, S, S], 0 = none) -> tokens [B, h*w, width]."""
        if self.semantic:
            if not isinstance(maps, LabelMap):
                raise TypeError(f"a semantic stem reads a LabelMap (label ids and their table), got {type(maps).__name__}")
            pooled = label_cell_means(maps, SEMANTIC_POOL)
            features = F.max_pool2d(self.projection(pooled), STEM_STRIDE // SEMANTIC_POOL, ceil_mode=True)
        else:
            features = self.convs(maps)  # [B, D, h, w]
        tokens = features.flatten(2).transpose(1, 2)
        if self.instance_embedding is not None:
            if instances is None:
                raise ValueError("this expert has instances but no instance map was given")
            tokens = tokens + self._instance_tokens(instances, features.shape[-2:])
        return tokens

    def _instance_tokens(self, instances: torch.Tensor, grid: torch.Size) -> torch.Tensor:
        """The embedding of each token's instance (zero where there is none), as [B, h*w, D].

        Instance ids only tell objects apart, so during training each image maps its ids to
        a random permutation of the slots (the model learns no meaning for a slot number);
        in eval mode id k uses slot k-1, so outputs are deterministic.
        """
        ids = _nearest(instances, grid).flatten(1).long()  # [B, h*w]
        slots_count = self.instance_embedding.num_embeddings
        slots = (ids - 1).remainder(slots_count)
        if self.training:
            permutation = torch.rand(ids.shape[0], slots_count, device=ids.device).argsort(dim=1)
            slots = permutation.gather(1, slots)
        embedded = self.instance_embedding(slots)
        return embedded * (ids > 0).unsqueeze(-1).to(embedded.dtype)


def conv_stack(in_channels: int, width: int, downsamplings: int = 4) -> nn.Sequential:
    """3×3 convolutions, ``downsamplings`` of them with stride 2 (GroupNorm + ReLU after each),
    widths doubling up to ``width``, then a last 3×3 convolution (stride 1) to ``width``."""
    widths = [max(width // 2 ** (downsamplings - i), 1) for i in range(downsamplings)] + [width]
    layers: list[nn.Module] = []
    channels = in_channels
    for index, out in enumerate(widths):
        last = index == len(widths) - 1
        layers.append(nn.Conv2d(channels, out, 3, stride=1 if last else 2, padding=1, bias=last))
        if not last:
            layers += [nn.GroupNorm(math.gcd(out, 8), out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers)


def _nearest(ids: torch.Tensor, grid: torch.Size) -> torch.Tensor:
    """The id at the centre of each grid cell (nearest-exact resizing), staying in integers."""
    rows = ((torch.arange(grid[0], device=ids.device) + 0.5) * (ids.shape[-2] / grid[0])).long()
    cols = ((torch.arange(grid[1], device=ids.device) + 0.5) * (ids.shape[-1] / grid[1])).long()
    return ids[:, rows][:, :, cols]
