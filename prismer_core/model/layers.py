"""Building blocks shared by the resampler and the decoder: attention on SDPA, and the adaptor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KeyValue = tuple[torch.Tensor, torch.Tensor]


class MultiHeadAttention(nn.Module):
    """Query/key/value projections, fused scaled-dot-product attention, output projection.

    Keys and values may come from a source of another width (``kv_dim``), as in cross-attention
    to vision tokens. :meth:`project_kv` is separate so callers can cache keys and values.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim or dim, dim)
        self.value = nn.Linear(kv_dim or dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, H, N, D/H]
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def project_kv(self, source: torch.Tensor) -> KeyValue:
        return self._split(self.key(source)), self._split(self.value(source))

    def forward(
        self,
        x: torch.Tensor,
        kv: KeyValue,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        group: int = 1,
    ) -> torch.Tensor:
        """``group`` > 1: each ``group`` consecutive rows of ``x`` share one row of ``kv`` (and
        of ``mask``), e.g. the beams of one image; they are read as one row with ``group``
        times the queries, not copied. Not with ``is_causal``."""
        q = self._split(self.query(x))  # [N, H, T, D]
        if group > 1:
            rows, heads, length, width = q.shape
            q = q.unflatten(0, (rows // group, group)).transpose(1, 2).flatten(2, 3)  # [N/g, H, g*T, D]
        out = F.scaled_dot_product_attention(
            q, kv[0], kv[1], attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        if group > 1:
            out = out.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)  # back to [N, H, T, D]
        return self.out(out.transpose(1, 2).flatten(2))


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


class Adaptor(nn.Module):
    """``x + up(relu(down(norm(x)))²)``: a residual bottleneck inserted in every backbone layer.

    ``up`` starts at exactly zero, so at initialisation the adaptor is the identity and the
    frozen backbone behaves as pre-trained; ``down`` receives gradient once ``up`` has moved
    (after the first optimiser step), as with ControlNet's zero convolutions.
    """

    def __init__(self, dim: int, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(squared_relu(self.down(self.norm(x))))
