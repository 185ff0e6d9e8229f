"""`seg`: semantic segmentation labels, from one of two backends (setting ``backend``).

- ``transformers`` (default): a semantic segmentation model from transformers, such as
  Mask2Former or OneFormer trained on ADE20K (the paper's expert), or SegFormer. Setting
  ``model``: a saved model folder or a hub id already in the local Hugging Face cache, e.g.
  ``facebook/mask2former-swin-large-ade-semantic``; default ``$PRISMER_WEIGHTS_DIR/seg``.
  Regions are named by the model's own classes.
- ``sam``: segment-anything proposes masks, and CLIP (open_clip) names each by zero-shot
  classification over the COCO and ADE20K class names (prismer_experts.vocabularies).
  Settings ``sam_checkpoint`` (an official ``sam_vit_{h,l,b}_*.pth``; the architecture is
  read from the checkpoint; default: the first found in ``$PRISMER_WEIGHTS_DIR``),
  ``clip_model`` / ``clip_pretrained`` (an open_clip architecture and a tag whose weights
  are in the local cache, or a checkpoint file; or ``clip_model=local-dir:PATH``).

Larger regions are painted first, so small ones on top stay visible. Models are free to
name classes no list foresees, so the expert is open-vocabulary; its declared vocabulary is
what the `sam` backend chooses from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import ExpertKind, ExpertSpec, Readiness, SemanticMap, hookimpl

from ._common import BuiltinExpert, require_modules
from ._models import find_pretrained_folder, find_weights_file
from .vocabularies import SEGMENTATION_VOCABULARY

BACKENDS = ("transformers", "sam")
SAM_CHECKPOINTS = ("sam_vit_h_4b8939.pth", "sam_vit_l_0b3195.pth", "sam_vit_b_01ec64.pth")


@dataclasses.dataclass
class SegOptions:
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


class Segmentation(BuiltinExpert):
    """Semantic regions named by class (transformers models, or segment-anything + CLIP)."""

    spec = ExpertSpec(
        name="seg",
        version="1.0",
        kind=ExpertKind.SEMANTIC,
        description="Semantic segmentation: transformers (Mask2Former, OneFormer…) or segment-anything + CLIP",
        vocabulary=SEGMENTATION_VOCABULARY,
        open_vocabulary=True,
        needs_weights=True,
        devices=("cpu", "cuda"),
    )
    Options = SegOptions

    @staticmethod
    def model_location(options: SegOptions) -> tuple[str | None, Readiness]:
        return find_pretrained_folder(
            options.model, expert="seg", key="model", what="transformers semantic segmentation model",
            default_name="seg", example="facebook/mask2former-swin-large-ade-semantic",
        )

    @staticmethod
    def sam_checkpoint(options: SegOptions):
        return find_weights_file(
            options.sam_checkpoint, expert="seg", key="sam_checkpoint", what="segment-anything checkpoint",
            default_names=SAM_CHECKPOINTS,
            source="a checkpoint such as sam_vit_b_01ec64.pth from the segment-anything repository's model links",
        )

    def check(self, options: SegOptions) -> Readiness:
        if options.backend == "transformers":
            missing = require_modules("torch", "transformers")
            return missing if not missing.ready else self.model_location(options)[1]
        missing = require_modules("segment_anything", extra="seg")
        if not missing.ready:
            return missing
        missing = require_modules("open_clip", package="open_clip_torch")
        if not missing.ready:
            return missing
        readiness = self.sam_checkpoint(options)[1]
        if not readiness.ready:
            return readiness
        from .seg_sam import clip_weights

        return clip_weights(options)[1]

    def load(self, device: str = "cpu") -> None:
        if self.options.backend == "transformers":
            from .seg_transformers import TransformersSegmenter as Backend
        else:
            from .seg_sam import SamClipSegmenter as Backend
        self.backend = Backend(self.options, device)

    def predict(self, images: Sequence[np.ndarray], context: Mapping | None = None) -> list[SemanticMap]:
        if not hasattr(self, "backend"):
            self.load()
        return self.backend.predict(images)


@hookimpl
def register_experts(register):
    register(Segmentation)
