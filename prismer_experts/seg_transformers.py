"""The `seg` expert's transformers backend: Mask2Former, MaskFormer, OneFormer or a per-pixel
classifier such as SegFormer, loaded offline from a folder or the local hub cache.

Post-processing is done here rather than by the processors' ``post_process_semantic_segmentation``
because those stretch the padded input onto the image, which shifts labels whenever the
processor pads (Mask2Former pads to a multiple of 32): scores are cropped to the unpadded
region first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prismer_core import SemanticMap

from ._models import groups_by_shape, quiet_hub_loading, torch_dtype
from .seg_common import SegOptions, model_location
from .vocabularies import class_name


class TransformersSegmenter:
    """Per-pixel classes from a transformers segmentation model."""

    def __init__(self, options: SegOptions, device: str) -> None:
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForSemanticSegmentation,
            AutoModelForUniversalSegmentation,
            AutoProcessor,
        )
        from transformers.models.auto.modeling_auto import MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES

        location, readiness = model_location(options)
        if location is None:
            raise RuntimeError(str(readiness))
        with quiet_hub_loading():
            config = AutoConfig.from_pretrained(location, local_files_only=True)
            self.universal = config.model_type in MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES
            model_class = AutoModelForUniversalSegmentation if self.universal else AutoModelForSemanticSegmentation
            self.model = model_class.from_pretrained(location, local_files_only=True)
            # OneFormer reads a task prompt, so it needs its full processor (with a tokenizer)
            self.task = ["semantic"] if config.model_type == "oneformer" else None
            processor_class = AutoProcessor if self.task else AutoImageProcessor
            self.processor = processor_class.from_pretrained(location, local_files_only=True)
        self.dtype = torch_dtype(device, options.half)
        self.model.to(device=device, dtype=self.dtype).eval()
        self.device = device
        self.names = [class_name(config.id2label[i]) for i in range(len(config.id2label))]

    def _inputs(self, image: np.ndarray) -> dict:
        extra = {"task_inputs": self.task} if self.task else {}
        return dict(self.processor(images=np.array(image), return_tensors="pt", **extra))  # a writable copy

    def predict(self, images: Sequence[np.ndarray]) -> list[SemanticMap]:
        import torch

        inputs = [self._inputs(image) for image in images]
        outputs: list[SemanticMap | None] = [None] * len(images)
        for group in groups_by_shape([item["pixel_values"] for item in inputs]):
            batch = {key: torch.cat([inputs[i][key] for i in group]).to(self.device) for key in inputs[group[0]]}
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                scores = self._scores(self.model(**batch))
            height, width = batch["pixel_values"].shape[-2:]
            for position, i in enumerate(group):
                mask = inputs[i].get("pixel_mask")
                valid = _valid_size(mask[0]) if mask is not None else (height, width)
                outputs[i] = self._label_map(scores[position], (height, width), valid, images[i].shape[:2])
        return outputs  # type: ignore[return-value]

    def _scores(self, output):
        """Class scores per pixel at the model's output resolution: C×h×w for each image."""
        if self.universal:  # mask classification: p(class | query) weighted by each query's mask
            classes = output.class_queries_logits.float().softmax(dim=-1)[..., :-1]
            masks = output.masks_queries_logits.float().sigmoid()
            return np.einsum("bqc,bqhw->bchw", classes.cpu().numpy(), masks.cpu().numpy())
        return output.logits.float().cpu().numpy()

    def _label_map(self, scores: np.ndarray, padded: tuple[int, int], valid: tuple[int, int], size) -> SemanticMap:
        import cv2

        rows = max(1, round(scores.shape[1] * valid[0] / padded[0]))
        cols = max(1, round(scores.shape[2] * valid[1] / padded[1]))
        cropped = scores[:, :rows, :cols].astype(np.float32)
        # upsample the scores, not the labels, for smooth borders; no larger than needed
        target = size if size[0] * size[1] <= valid[0] * valid[1] else valid
        resized = np.stack([cv2.resize(c, (target[1], target[0]), interpolation=cv2.INTER_LINEAR) for c in cropped])
        classes = resized.argmax(axis=0).astype(np.int32)
        if tuple(target) != tuple(size):
            classes = cv2.resize(classes, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        present = np.unique(classes)
        names: list[str] = []
        lookup = np.zeros(len(self.names), dtype=np.int32)
        for index in present:  # one label per distinct name (models may repeat a name)
            name = self.names[index]
            if name not in names:
                names.append(name)
            lookup[index] = names.index(name) + 1
        return SemanticMap(lookup[classes], names)


def _valid_size(pixel_mask) -> tuple[int, int]:
    """Height and width of the unpadded image inside a processor's padded input."""
    rows = int(pixel_mask.any(dim=1).sum())
    cols = int(pixel_mask.any(dim=0).sum())
    return rows, cols
