"""Linear layers whose weights are packed once for oneDNN, for inference on a CPU.

Why: ``F.linear`` hands the matrix library an unpacked weight on every call. For the few rows
of a decoding step (3 beams of one image: 3 rows) MKL then streams the weights at about a fifth
of this machine's memory bandwidth; oneDNN with the weight reordered once into its blocked
layout runs the same products about 3x faster in fp32 and 2x in bf16, and the 197-row ViT
products about 1.4x faster (bench/bench_model.py, docs/benchmarks.md, issue 18). The reorder is
what PyTorch's own compiler does when it freezes a CPU model (``torch.ops.mkldnn``); this
module does it without compiling, so every input shape (a growing key/value cache, any batch)
runs at once.

:func:`pack_for_inference` opts a model in; the Predictor calls it for CPU inference. It turns
every ``nn.Linear`` into a :class:`PackedLinear` in place (same parameters, same state dict)
and marks the input projections of ``nn.MultiheadAttention`` and the embedding matrices (an
output layer tied to them) for :func:`linear`; a weight is packed on its first product. A packed
weight is used only when gradients are off and the input is on the CPU; it is made again
whenever the weight changes (another tensor, dtype or an in-place update), so training the
model afterwards stays correct. Packing keeps a second copy of each weight: the price is the
weights' size in memory again.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

#: the row count oneDNN is told to expect; measured: 3 or 24 give the same speed at 1-197 rows
ROWS_HINT = 8
_ATTRIBUTE = "_onednn_pack"


class _Pack:
    """The packed copy of one weight, and what it was made from."""

    def __init__(self) -> None:
        self.source: tuple[int, int, torch.dtype] | None = None
        self.weight: torch.Tensor | None = None
        self.failed = False

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        source = (weight.data_ptr(), weight._version, weight.dtype)
        if source != self.source:
            try:
                self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)
            except RuntimeError as error:  # e.g. a dtype this CPU's oneDNN cannot pack: plain F.linear
                self.failed = True
                warnings.warn(f"oneDNN cannot pack a {weight.dtype} weight here ({error}); using F.linear", stacklevel=3)
                return F.linear(x, weight, bias)
            self.source = source
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, bias, "none", [], "")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through the packed weight when :func:`pack_for_inference` marked it and
    the call needs no gradient and runs on the CPU."""
    pack: _Pack | None = getattr(weight, _ATTRIBUTE, None)
    if (pack is None or pack.failed or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != weight.dtype
            or torch.is_autocast_enabled("cpu")):
        return F.linear(x, weight, bias)
    return pack(x, weight, bias)


class PackedLinear(nn.Linear):
    """``nn.Linear`` that calls :func:`linear`; made from an ``nn.Linear`` by swapping its class,
    so hooks and wrappers that hold the module (peft, DeepSpeed) still hold it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def pack_for_inference(model: nn.Module) -> int:
    """Opt ``model`` in to packed weights for CPU inference; returns how many weights were marked
    (0 where this PyTorch has no oneDNN)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return 0
    marked = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
            module.__class__ = PackedLinear
        if isinstance(module, PackedLinear):
            weight = module.weight
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            weight = module.in_proj_weight  # read through linear() by the vision encoder
        elif isinstance(module, nn.Embedding):
            weight = module.weight  # a tied output layer reads it through linear(); packed on first use
        else:
            continue
        if getattr(weight, _ATTRIBUTE, None) is None:
            setattr(weight, _ATTRIBUTE, _Pack())
            marked += 1
    return marked
