"""`objdet`: objects found by an ultralytics YOLO detector, as labels over their boxes.

Each box is filled with its COCO class name and its own instance id; larger boxes are
painted first, so a small object in front of a large one stays visible.

Weights (setting ``model``): a COCO-trained YOLO checkpoint (``yolo11n.pt`` … ``yolo11x.pt``,
``yolov8*.pt`` from the ultralytics assets releases); default: the first of those names found
in ``$PRISMER_WEIGHTS_DIR``. A .pt checkpoint is a pickle that ultralytics unpickles in full:
use files from ultralytics or another source you trust. Ultralytics is kept offline
(``YOLO_OFFLINE=1``) so it never fetches anything while Prismer runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import ConfigurableExpert, ExpertOptions, ExpertSpec, Readiness, SemanticMap, hookimpl

from ._models import CPU_AND_GPU, find_weights_file
from .vocabularies import COCO_CLASSES, class_name

DEFAULT_CHECKPOINTS = tuple(f"{family}{size}.pt" for family in ("yolo11", "yolov8") for size in "xlmsn")


class ObjdetOptions(ExpertOptions):
    """Settings of the `objdet` expert (``--set objdet.KEY=VALUE`` or ``PRISMER_OBJDET_KEY``)."""

    #: YOLO checkpoint (.pt) trained on COCO
    model: str | None = None
    #: boxes below this confidence are dropped
    min_score: float = 0.25
    #: non-maximum suppression IoU, inference size (pixels), most boxes per image
    iou: float = 0.7
    image_size: int = 640
    max_boxes: int = 100
    #: run in float16 on a GPU
    half: bool = True

    def check(self) -> str | None:
        if not 0.0 <= self.min_score <= 1.0 or not 0.0 < self.iou <= 1.0:
            return f"min_score and iou must lie in [0, 1], got {self.min_score} and {self.iou}"
        if self.image_size < 32 or self.max_boxes < 1:
            return f"image_size must be >= 32 and max_boxes >= 1, got {self.image_size} and {self.max_boxes}"
        return None


def boxes_to_map(height: int, width: int, boxes: np.ndarray, names: Sequence[str]) -> SemanticMap:
    """Fill boxes (N×4 x1, y1, x2, y2) with their class labels and instance ids 1..N."""
    labels = np.zeros((height, width), dtype=np.int32)
    instances = np.zeros((height, width), dtype=np.int32)
    used: list[str] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
    for instance, index in enumerate(np.argsort(-areas, kind="stable"), start=1):
        x1, y1, x2, y2 = np.round(boxes[index]).astype(int)
        x1, x2 = np.clip([x1, x2], 0, width)
        y1, y2 = np.clip([y1, y2], 0, height)
        if x2 <= x1 or y2 <= y1:
            continue
        if names[index] not in used:
            used.append(names[index])
        labels[y1:y2, x1:x2] = used.index(names[index]) + 1
        instances[y1:y2, x1:x2] = instance
    return SemanticMap(labels, used, instances)


class ObjectDetection(ConfigurableExpert):
    """COCO objects (YOLO) as box-shaped labels, one instance per box."""

    spec = ExpertSpec.semantic("objdet", "1.0", vocabulary=COCO_CLASSES, has_instances=True, needs_weights=True,
                               devices=CPU_AND_GPU, description="COCO object detection (ultralytics YOLO) as labels over the boxes")
    Options = ObjdetOptions

    def _weights(self, options: ObjdetOptions):
        return find_weights_file(
            options.model, expert="objdet", key="model", what="YOLO checkpoint",
            default_names=DEFAULT_CHECKPOINTS,
            source="a COCO-trained YOLO checkpoint such as yolo11n.pt from the ultralytics assets releases",
        )

    def check(self, options: ObjdetOptions) -> Readiness:
        missing = Readiness.requiring("ultralytics", extra="detect")
        return missing if not missing.ready else self._weights(options)[1]

    def load(self, device: str = "cpu") -> None:
        os.environ.setdefault("YOLO_OFFLINE", "1")  # read when ultralytics is first imported
        YOLO = import_yolo()

        path, readiness = self._weights(self.options)
        if path is None:
            raise RuntimeError(str(readiness))
        self.model = YOLO(str(path), task="detect")
        self.names = {int(k): class_name(v) for k, v in self.model.names.items()}
        unknown = sorted(set(self.names.values()) - set(COCO_CLASSES))
        if unknown:
            raise ValueError(
                f"{path} detects classes outside COCO ({', '.join(unknown[:5])}…): `objdet` speaks COCO's "
                "80 classes; publish a detector with other classes as its own expert plugin"
            )
        self.device = device

    def predict(self, images: Sequence[np.ndarray], context: Mapping | None = None) -> list[SemanticMap]:
        if not hasattr(self, "model"):
            self.load()
        options = self.options
        precision = {"quantize": 16} if options.half and self.device.startswith("cuda") else {}
        results = self.model.predict(  # one batch; ultralytics letterboxes images of any size
            [np.ascontiguousarray(image[..., ::-1]) for image in images],  # it takes BGR arrays
            conf=options.min_score, iou=options.iou, imgsz=options.image_size, max_det=options.max_boxes,
            device=self.device, verbose=False, **precision,
        )
        outputs = []
        for image, result in zip(images, results):
            boxes = result.boxes.xyxy.cpu().numpy()
            names = [self.names[int(c)] for c in result.boxes.cls.cpu().numpy()]
            outputs.append(boxes_to_map(image.shape[0], image.shape[1], boxes, names))
        return outputs


@hookimpl
def register_experts(register):
    register(ObjectDetection)


def import_yolo():
    """Import ultralytics without keeping its process-wide patch of ``PIL.Image.open``.

    On import, ultralytics replaces ``Image.open`` with a wrapper that, on an unidentifiable
    file, tries to install and import pi-heif: every corrupt image anywhere in the process
    (data loaders included) would then fail with an unrelated ModuleNotFoundError.
    """
    from PIL import Image

    original_open = Image.open
    try:
        from ultralytics import YOLO
    finally:
        Image.open = original_open
    return YOLO

