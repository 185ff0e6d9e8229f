"""MaMMUT's contrastive pass: pooled image and text embeddings, and the loss that aligns them.

The text side is the language decoder itself run over text alone (bidirectional, no
cross-attention: :meth:`prismer_core.model.decoder.TextDecoder.encode_text`); this module only
pools. The image side pools the vision tokens the decoder's cross-attention reads. Both go
through a projection into one ``contrastive.dim``-wide space and are L2-normalised, so a dot
product is a cosine similarity; a learned temperature scales them for the symmetric InfoNCE
loss (CLIP's), computed over the whole global batch when several processes train.

Rows of one image are not negatives of each other: a batch (of one process, or gathered from
all) may hold several rows of one scene (the demo has a caption and several questions per
image, each row bringing the image again, and each captioned image's caption); a text is
then contrasted against the other images only, not against another crop of its own image,
and an image against the texts of other images only. The same holds for two rows whose texts
are the same string (two scenes both "one shape: a red circle on the left"): neither text is
a negative of the other's image.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..specs import ContrastiveSpec
from .layers import MultiHeadAttention

#: CLIP's cap on the learned logit scale (temperature 0.01), which keeps training stable.
MAX_LOGIT_SCALE = math.log(100.0)


class AttentionPool(nn.Module):
    """One learned query attends over the tokens (CoCa's attentional pooler with one query)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.norm = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens [B, N, W] (``valid`` [B, N]: which are real) -> one vector [B, W] per row."""
        tokens = self.norm(tokens)
        mask = None if valid is None else valid[:, None, None, :].bool()
        return self.attn(self.query.expand(tokens.shape[0], -1, -1), self.attn.project_kv(tokens), mask=mask)[:, 0]


class ContrastiveHeads(nn.Module):
    """The image pooler, the text pooler, their projections and the learned temperature."""

    def __init__(self, spec: ContrastiveSpec, vision_width: int, vision_heads: int, text_width: int, text_heads: int) -> None:
        super().__init__()
        self.text_pool_kind = spec.text_pool
        self.image_pool = AttentionPool(vision_width, vision_heads)
        self.image_proj = nn.Linear(vision_width, spec.dim, bias=False)
        self.text_pool = AttentionPool(text_width, text_heads) if spec.text_pool == "attention" else None
        self.text_proj = nn.Linear(text_width, spec.dim, bias=False)
        # shape [1], not a scalar: DeepSpeed broadcasts parameters as bytes, which a 0-dim tensor cannot be viewed as
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / spec.temperature)))

    def embed_images(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """Vision tokens [B, N, W] -> unit vectors [B, dim]."""
        return F.normalize(self.image_proj(self.image_pool(vision_tokens)), dim=-1)

    def embed_texts(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The text pass's states [N, T, H] (right-padded; ``valid`` [N, T]) -> unit vectors [N, dim]."""
        if self.text_pool is not None:
            pooled = self.text_pool(hidden, valid)
        else:  # the end token: the last real position of each row
            last = valid.long().sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return F.normalize(self.text_proj(pooled), dim=-1)

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()[0]


def contrastive_loss(
    images: torch.Tensor,
    texts: torch.Tensor,
    rows: torch.Tensor,
    image_keys: torch.Tensor,
    text_keys: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE of the image-text pairs of the whole global batch.

    ``images`` [B, D] and ``image_keys`` [B] (equal for rows of one image) are every batch row
    of this process; ``texts`` [N, D], ``text_keys`` [N] (equal for equal strings) and
    ``rows`` [N] (the batch row each text describes) are the paired ones. Under
    torch.distributed every process's rows are gathered first, so each text meets every image
    of the global batch; see :func:`gather_rows` for how gradients flow back. Pairs that are
    known to match (one image, or one text; module docstring) are left out of each other's
    softmax rather than counted as negatives.
    """
    offset = _rows_before_me(images.shape[0], images.device)
    images, image_keys = gather_rows(images), gather_rows(image_keys)
    texts, text_keys, rows = gather_rows(texts), gather_rows(text_keys), gather_rows(rows + offset)
    if texts.shape[0] == 0:
        return images.sum() * 0.0  # no pair anywhere in this step: nothing to align
    row_text = torch.full_like(image_keys, -1)  # the text key of each image row (-1: none)
    row_text[rows] = text_keys
    logits = scale * texts.float() @ images.float().T  # [N, B]: text n against image b
    own = F.one_hot(rows, images.shape[0]).bool()
    same_image = image_keys[None, :] == image_keys[rows][:, None]
    same_text = row_text[None, :] == text_keys[:, None]
    text_to_image = logits.masked_fill((same_image | same_text) & ~own, float("-inf"))
    # image -> text: the image of pair n against every text m; texts of that image (or equal
    # to its own text) other than n's own are left out.
    between_texts = (image_keys[rows][None, :] == image_keys[rows][:, None]) | (text_keys[None, :] == text_keys[:, None])
    image_to_text = logits[:, rows].T.masked_fill(between_texts & ~torch.eye(len(rows), dtype=torch.bool, device=rows.device), float("-inf"))
    targets = torch.arange(len(rows), device=rows.device)
    return (F.cross_entropy(text_to_image, rows) + F.cross_entropy(image_to_text, targets)) / 2


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sizes(count: int, device: torch.device) -> list[int]:
    rank, world = _distributed()
    if world == 1:
        return [count]
    mine = torch.tensor([count], device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    return [int(s) for s in everyone]


def _rows_before_me(count: int, device: torch.device) -> int:
    """How many batch rows the processes before this one hold (0 in a single process)."""
    rank, _ = _distributed()
    return sum(_sizes(count, device)[:rank])


def _exchange(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows of ``x``, concatenated in rank order, and where this process's begin."""
    rank, world = _distributed()
    sizes = _sizes(x.shape[0], x.device)
    padded = F.pad(x, (*([0, 0] * (x.ndim - 1)), 0, max(sizes) - x.shape[0])).contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]), sum(sizes[:rank])


class _GatherRows(torch.autograd.Function):
    """All processes' rows; the gradient of this process's own rows flows back to them,
    multiplied by the world size (see :func:`gather_rows`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        gathered, ctx.start = _exchange(x)
        ctx.count, ctx.world = x.shape[0], _distributed()[1]
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad[ctx.start : ctx.start + ctx.count] * ctx.world


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` [n, ...] of every process, concatenated in rank order (as it is in one process).

    Every process then computes the same loss over the global batch, and each sends back only
    the gradient of its own rows (no collective runs in the backward pass, so none can meet
    DDP's or DeepSpeed's gradient reductions out of order). That gradient is multiplied by the
    world size because DDP and DeepSpeed average the processes' gradients: the average of the
    own-row parts, times the world size, is the gradient of the global loss, exactly what one
    process training on the whole global batch gets (tests/test_contrastive.py checks it).
    Integer tensors carry no gradient. Rows may differ in number between processes (a skipped
    bad sample); they are padded for the exchange and cut again.
    """
    if _distributed()[1] == 1:
        return x
    return _GatherRows.apply(x) if x.is_floating_point() else _exchange(x)[0]
