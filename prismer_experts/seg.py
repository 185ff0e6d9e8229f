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

from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import ConfigurableExpert, ExpertSpec, Readiness, SemanticMap, hookimpl

from ._models import CPU_AND_GPU

from .seg_common import SegOptions, clip_weights, model_location, sam_checkpoint
from .vocabularies import SEGMENTATION_VOCABULARY


class Segmentation(ConfigurableExpert):
    """Semantic regions named by class (transformers models, or segment-anything + CLIP)."""

    spec = ExpertSpec.semantic(
        "seg", "1.0", vocabulary=SEGMENTATION_VOCABULARY, open_vocabulary=True, needs_weights=True, devices=CPU_AND_GPU,
        description="Semantic segmentation: transformers (Mask2Former, OneFormer…) or segment-anything + CLIP")
    Options = SegOptions

    def check(self, options: SegOptions) -> Readiness:
        if options.backend == "transformers":
            missing = Readiness.requiring("torch", "transformers")
            return missing if not missing.ready else model_location(options)[1]
        missing = Readiness.requiring("segment_anything", extra="seg")
        if not missing.ready:
            return missing
        missing = Readiness.requiring("open_clip", package="open_clip_torch")
        if not missing.ready:
            return missing
        readiness = sam_checkpoint(options)[1]
        return readiness if not readiness.ready else clip_weights(options)[1]

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
