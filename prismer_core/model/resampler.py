"""The Experts Resampler: a fixed number of learned latents read all expert tokens.

Perceiver-style: in every block the latents attend to ``[latents ; expert tokens]``, then go
through an MLP with squared ReLU; both branches start at zero, so the latents start as the
learned queries and training opens the branches. However many experts a run uses, the vision
encoder receives the same number of tokens from here. A ``mask`` hides the tokens of experts a
sample lacks; the latents always attend to themselves, so a sample that lacks every expert
still has its latents (the learned queries, refined by attending to each other).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import MultiHeadAttention, squared_relu


class ResamplerBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_latents = nn.LayerNorm(width)
        self.norm_tokens = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.fc_in = nn.Linear(width, 4 * width)
        self.fc_out = nn.Linear(4 * width, width)
        # Both residual branches start at zero, as the adaptors do: at initialisation the squared
        # ReLU made the MLP add a large offset that was the same for every image (output norm 7.4
        # with 0.07 varying across images in the tiny spec), which training only inflated.
        for projection in (self.attn.out, self.fc_out):
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: [B, 1, 1, L + N] bool over ``[latents ; tokens]`` (True: attended), or None."""
        queries = self.norm_latents(latents)
        kv = self.attn.project_kv(torch.cat([queries, self.norm_tokens(tokens)], dim=1))
        latents = latents + self.attn(queries, kv, mask=mask)
        return latents + self.fc_out(squared_relu(self.fc_in(self.norm_mlp(latents))))


def queries_and_tokens_mask(queries: int, token_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A :class:`ResamplerBlock` mask [B, 1, 1, Q + N] from the tokens' [B, N] (None: all read):
    the queries always read each other."""
    if token_mask is None:
        return None
    own = torch.ones(token_mask.shape[0], queries, dtype=torch.bool, device=token_mask.device)
    return torch.cat([own, token_mask.to(torch.bool)], dim=1)[:, None, None, :]


class ExpertsResampler(nn.Module):
    def __init__(self, width: int, latents: int = 64, layers: int = 4, heads: int = 8) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(latents, width) * width**-0.5)
        self.blocks = nn.ModuleList(ResamplerBlock(width, heads) for _ in range(layers))

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Expert tokens [B, N, D] -> latents [B, L, D]; ``token_mask`` [B, N] bool (True: the
        token is read; None: all are)."""
        latents = self.latents.expand(tokens.shape[0], -1, -1)
        mask = queries_and_tokens_mask(latents.shape[1], token_mask)
        for block in self.blocks:
            latents = block(latents, tokens, mask)
        return latents
