"""The mapper: vision tokens -> K prefix embeddings in a frozen causal LM's width.

A query transformer (BLIP-2's Q-Former, MAPL's mapping network): K learned queries read every
vision token (the RGB tokens and the Experts Resampler's latents) through Perceiver blocks
(the resampler's own: queries attend to ``[queries ; tokens]``, then an MLP), and a linear map
takes them to the LM's width. The LM reads them before the text, as Frozen's visual prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from .resampler import ResamplerBlock, queries_and_tokens_mask


class QueryMapper(nn.Module):
    def __init__(self, vision_width: int, lm_width: int, queries: int = 32, layers: int = 2, heads: int = 4,
                 width: int | None = None) -> None:
        super().__init__()
        width = width or vision_width
        self.project_in = nn.Linear(vision_width, width) if width != vision_width else nn.Identity()
        self.queries = nn.Parameter(torch.randn(queries, width) * width**-0.5)
        self.blocks = nn.ModuleList(ResamplerBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.project_out = nn.Linear(width, lm_width)

    def match_scale(self, embeddings: torch.Tensor) -> None:
        """Start the prefix at the size of the LM's own token embeddings: a prefix many times
        larger (a fresh linear layer's) would drown the prompt in the frozen LM's attention."""
        with torch.no_grad():
            scale = embeddings.float().std() / (self.project_out.weight.float().std() * self.project_out.in_features**0.5)
            self.project_out.weight.mul_(scale.to(self.project_out.weight.dtype))
            self.project_out.bias.zero_()

    def forward(self, vision_tokens: torch.Tensor, vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Vision tokens [B, N, vision_width] -> prefix embeddings [B, queries, lm_width];
        ``vision_mask`` [B, N] bool: the tokens the queries may read (None: all)."""
        tokens = self.project_in(vision_tokens)
        queries = self.queries.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        mask = queries_and_tokens_mask(queries.shape[1], vision_mask)
        for block in self.blocks:
            queries = block(queries, tokens, mask)
        return self.project_out(self.norm(queries))
