"""What the `seg` expert and its two backends share: settings, where weights are, painting masks.

The expert (prismer_experts.seg) and its backends (seg_transformers, seg_sam) import from
here, never from each other's modules in both directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prismer_core import ExpertOptions, Readiness, SemanticMap

from ._models import find_pretrained_folder, find_weights_file
from .embedders import ClipTextEmbedder, WeightsNotHere

BACKENDS = ("transformers", "sam")
SAM_CHECKPOINTS = ("sam_vit_h_4b8939.pth", "sam_vit_l_0b3195.pth", "sam_vit_b_01ec64.pth")


class SegOptions(ExpertOptions):
    """Settings of the `seg` expert (``--set seg.KEY=VALUE`` or ``PRISMER_SEG_KEY``)."""

    backend: str = "transformers"
    #: transformers: semantic segmentation model (folder or cached hub id)
    model: str | None = None
    #: sam: segment-anything checkpoint, and the CLIP model that names the masks
    sam_checkpoint: str | None = None
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"
    #: sam: prompt grid, and the mask generator's quality filters
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    #: run in float16 on a GPU
    half: bool = True

    def check(self) -> str | None:
        if self.backend not in BACKENDS:
            return f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
        if self.points_per_side < 1:
            return f"points_per_side must be >= 1, got {self.points_per_side}"
        return None


def masks_to_map(height: int, width: int, masks: Sequence[np.ndarray], names: Sequence[str]) -> SemanticMap:
    """Paint boolean masks with their names, largest first; each name gets one label id."""
    labels = np.zeros((height, width), dtype=np.int32)
    used: list[str] = []
    for index in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        if names[index] not in used:
            used.append(names[index])
        labels[masks[index]] = used.index(names[index]) + 1
    present = set(np.unique(labels)) - {0}
    if len(present) < len(used):  # a region hidden entirely by others: drop its name
        keep = [i + 1 for i in range(len(used)) if i + 1 in present]
        remap = np.zeros(len(used) + 1, dtype=np.int32)
        remap[keep] = np.arange(1, len(keep) + 1)
        labels, used = remap[labels], [used[k - 1] for k in keep]
    return SemanticMap(labels, list(used))


def model_location(options: SegOptions) -> tuple[str | None, Readiness]:
    """The transformers segmentation model to load offline, or why there is none."""
    return find_pretrained_folder(
        options.model, expert="seg", key="model", what="transformers semantic segmentation model",
        default_name="seg", example="facebook/mask2former-swin-large-ade-semantic",
    )


def sam_checkpoint(options: SegOptions) -> tuple[Path | None, Readiness]:
    """The segment-anything checkpoint file, or why there is none."""
    return find_weights_file(
        options.sam_checkpoint, expert="seg", key="sam_checkpoint", what="segment-anything checkpoint",
        default_names=SAM_CHECKPOINTS,
        source="a checkpoint such as sam_vit_b_01ec64.pth from the segment-anything repository's model links",
    )


def clip_weights(options: SegOptions) -> tuple[tuple[Path, bool] | None, Readiness]:
    """(weights file, quick_gelu) of the CLIP model that names masks, found without downloading.

    The lookup is the `clip` text embedder's, so both agree on where open_clip weights live.
    """
    embedder = ClipTextEmbedder(model=options.clip_model, pretrained=options.clip_pretrained)
    try:
        return embedder.weights, Readiness.ok()
    except WeightsNotHere as exc:
        fix = f"{exc.fix}; set with --set seg.clip_model=… / seg.clip_pretrained=…" if exc.fix else (
            "set --set seg.clip_model=… and seg.clip_pretrained=… (or PRISMER_SEG_CLIP_MODEL, PRISMER_SEG_CLIP_PRETRAINED)"
        )
        return None, Readiness.missing(f"CLIP for naming masks: {exc.reason}", fix)
