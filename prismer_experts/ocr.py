"""`ocr`: text read in the image becomes labels over its (rotated) text boxes.

Each text box an OCR engine finds is filled with a label whose name is the text it read
(lower-cased, whitespace collapsed; a box may hold a few words when they sit on one line),
and with an instance id of its own, so two boxes that read the same word stay apart.

Backends (setting ``backend``):

- ``rapidocr`` (default): rapidocr-onnxruntime, which ships the PP-OCRv4 detection and
  recognition models in its wheel, so it runs offline with no weights to fetch.
- ``paddleocr``: PaddleOCR 3 with models from local folders (``det_model_dir``,
  ``rec_model_dir``, default ``$PRISMER_WEIGHTS_DIR/paddleocr/<model name>``). paddleocr
  pins an older numpy than the rest of Prismer, so it needs its own virtual environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from prismer_core import ConfigurableExpert, ExpertOptions, ExpertSpec, Readiness, SemanticMap, hookimpl, normalize_label
from prismer_core.paths import weights_dir

from ._models import CPU_AND_GPU, cpu_threads


BACKENDS = ("rapidocr", "paddleocr")


@dataclasses.dataclass(frozen=True)
class TextBox:
    """One piece of text an engine read: its outline (N×2 x, y pixels), text and confidence."""

    polygon: np.ndarray
    text: str
    score: float


def text_boxes_to_map(height: int, width: int, boxes: Sequence[TextBox]) -> SemanticMap:
    """Fill each box with its text's label (names shared) and its own instance id (1, 2, …)."""
    import cv2

    labels = np.zeros((height, width), dtype=np.int32)
    instances = np.zeros((height, width), dtype=np.int32)
    names: list[str] = []
    instance = 0
    for box in boxes:
        name = normalize_label(box.text)
        if not name:
            continue
        if name not in names:
            names.append(name)
        instance += 1
        outline = [np.round(np.asarray(box.polygon, dtype=np.float64)).astype(np.int32).reshape(-1, 2)]
        cv2.fillPoly(labels, outline, names.index(name) + 1)
        cv2.fillPoly(instances, outline, instance)
    return SemanticMap(labels, names, instances)


class OcrOptions(ExpertOptions):
    """Settings of the `ocr` expert (``--set ocr.KEY=VALUE`` or ``PRISMER_OCR_KEY``)."""

    backend: str = "rapidocr"
    #: boxes whose recognition confidence is below this are dropped
    min_score: float = 0.5
    #: rapidocr only: the detector sees an image's short side at 736 px, but a small image is
    #: upscaled at most this much (on 128-320 px scenes 2x read 95-100% of the words the engine's
    #: own 2.3-5.8x reads, 1.3-5.4 times as fast: docs/benchmarks.md, "OCR detector scale")
    max_upscale: float = 2.0
    #: paddleocr only: model names and folders (default: $PRISMER_WEIGHTS_DIR/paddleocr/<name>)
    det_model_name: str = "PP-OCRv5_mobile_det"
    rec_model_name: str = "PP-OCRv5_mobile_rec"
    det_model_dir: str | None = None
    rec_model_dir: str | None = None

    def check(self) -> str | None:
        if self.backend not in BACKENDS:
            return f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
        if not 0.0 <= self.min_score <= 1.0:
            return f"min_score must lie in [0, 1], got {self.min_score}"
        if self.max_upscale < 1.0:
            return f"max_upscale must be at least 1, got {self.max_upscale}"
        return None


class TextReader(Protocol):
    def load(self, device: str) -> None: ...

    def read(self, image: np.ndarray) -> list[TextBox]: ...


class RapidOcrReader:
    """rapidocr-onnxruntime: detection, orientation and recognition models in the wheel.

    Its detector scales every image so the short side is 736 px: a 192 px scene runs it on 15 times
    its pixels, which costs most of the reading time and invents text in the interpolation. The
    reader caps that upscale per image (``max_upscale``); images with a short side of 736 px or
    more are read exactly as the engine reads them."""

    #: the engine's detection size for the short side (its config's ``Det.limit_side_len``)
    DETECTION_SIDE = 736

    def __init__(self, options: OcrOptions) -> None:
        self.options = options
        self.engine = None

    @staticmethod
    def check(options: OcrOptions) -> Readiness:
        return Readiness.requiring("rapidocr_onnxruntime", package="rapidocr-onnxruntime")

    def load(self, device: str) -> None:
        from rapidocr_onnxruntime import RapidOCR

        cuda = device.startswith("cuda")  # needs onnxruntime-gpu; otherwise onnxruntime falls back to CPU
        self.engine = RapidOCR(
            text_score=self.options.min_score, det_use_cuda=cuda, cls_use_cuda=cuda, rec_use_cuda=cuda,
            intra_op_num_threads=cpu_threads(), inter_op_num_threads=1,
            det_limit_side_len=self.DETECTION_SIDE, det_limit_type="min",
        )

    def detection_side(self, height: int, width: int) -> int:
        """The short side the detector works at for an image of this size."""
        return int(min(self.DETECTION_SIDE, max(min(height, width) * self.options.max_upscale, 32)))

    def read(self, image: np.ndarray) -> list[TextBox]:
        # the detector reads this attribute on every call (rapidocr-onnxruntime 1.4) to size its input
        self.engine.text_det.limit_side_len = self.detection_side(*image.shape[:2])
        result, _ = self.engine(np.ascontiguousarray(image[..., ::-1]))  # the engine expects BGR arrays
        return [TextBox(np.asarray(box, dtype=np.float32), text, float(score)) for box, text, score in result or []]


class PaddleOcrReader:
    """PaddleOCR 3 from local model folders (it would download them otherwise)."""

    def __init__(self, options: OcrOptions) -> None:
        self.options = options
        self.engine = None

    @staticmethod
    def model_dirs(options: OcrOptions) -> dict[str, Path | None]:
        root = weights_dir()
        default = (lambda name: root / "paddleocr" / name) if root else (lambda name: None)
        return {
            "det_model_dir": Path(options.det_model_dir) if options.det_model_dir else default(options.det_model_name),
            "rec_model_dir": Path(options.rec_model_dir) if options.rec_model_dir else default(options.rec_model_name),
        }

    @classmethod
    def check(cls, options: OcrOptions) -> Readiness:
        missing = Readiness.requiring("paddleocr", "paddle", extra="ocr-paddle")
        if not missing.ready:
            return Readiness.missing(
                f"backend paddleocr: {missing.reason}",
                "pip install 'prismer[ocr-paddle]' into a separate virtual environment (paddleocr pins an "
                "older numpy than Prismer needs), or use the default backend: --set ocr.backend=rapidocr",
            )
        for key, folder in cls.model_dirs(options).items():
            if folder is None or not folder.is_dir():
                name = options.det_model_name if key.startswith("det") else options.rec_model_name
                where = f"folder {folder} does not exist" if folder else "no folder configured"
                return Readiness.missing(
                    f"backend paddleocr: {key} for model {name}: {where}",
                    f"put the exported {name} inference model in $PRISMER_WEIGHTS_DIR/paddleocr/{name}, "
                    f"or --set ocr.{key}=/path/to/{name}",
                )
        return Readiness.ok()

    def load(self, device: str) -> None:
        from paddleocr import PaddleOCR

        dirs = self.model_dirs(self.options)
        self.engine = PaddleOCR(
            text_detection_model_name=self.options.det_model_name,
            text_detection_model_dir=str(dirs["det_model_dir"]),
            text_recognition_model_name=self.options.rec_model_name,
            text_recognition_model_dir=str(dirs["rec_model_dir"]),
            use_doc_orientation_classify=False,
            use_doc_unwarping=False,
            use_textline_orientation=False,
            text_rec_score_thresh=self.options.min_score,
            device="gpu" if device.startswith("cuda") else "cpu",
        )

    def read(self, image: np.ndarray) -> list[TextBox]:
        boxes: list[TextBox] = []
        for result in self.engine.predict(np.ascontiguousarray(image[..., ::-1])):  # BGR, as OpenCV reads
            for polygon, text, score in zip(result["rec_polys"], result["rec_texts"], result["rec_scores"]):
                boxes.append(TextBox(np.asarray(polygon, dtype=np.float32), text, float(score)))
        return boxes


READERS: dict[str, type] = {"rapidocr": RapidOcrReader, "paddleocr": PaddleOcrReader}


class Ocr(ConfigurableExpert):
    """Text boxes labelled with the text read in them; one instance per box."""

    spec = ExpertSpec.semantic("ocr", "1.1", open_vocabulary=True, has_instances=True, devices=CPU_AND_GPU,
                               description="Text read by OCR (rapidocr, or paddleocr) as labels over the text boxes")
    Options = OcrOptions

    def check(self, options: OcrOptions) -> Readiness:
        return READERS[options.backend].check(options)

    def load(self, device: str = "cpu") -> None:
        self.reader: TextReader = READERS[self.options.backend](self.options)
        self.reader.load(device)

    def predict(self, images: Sequence[np.ndarray], context: Mapping | None = None) -> list[SemanticMap]:
        if not hasattr(self, "reader"):
            self.load()
        min_score = self.options.min_score
        outputs = []
        for image in images:  # both engines take one image at a time
            boxes = [box for box in self.reader.read(image) if box.score >= min_score]
            outputs.append(text_boxes_to_map(image.shape[0], image.shape[1], boxes))
        return outputs


@hookimpl
def register_experts(register):
    register(Ocr)
