"""`edge`: classical edge detection (Canny on a lightly blurred grey image), no weights needed."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import DenseMap, ExpertKind, ExpertSpec, Readiness, hookimpl

from ._common import BuiltinExpert, require_modules


@dataclasses.dataclass
class EdgeOptions:
    """Settings of the `edge` expert (``--set edge.KEY=VALUE`` or ``PRISMER_EDGE_KEY``)."""

    #: Canny hysteresis thresholds on the Sobel gradient of the grey image (0-255); the
    #: defaults are those of the ControlNet canny annotator
    low: float = 100.0
    high: float = 200.0

    def check(self) -> str | None:
        if not 0 <= self.low <= self.high:
            return f"Canny thresholds need 0 <= low <= high, got low={self.low}, high={self.high}"
        return None


class CannyEdges(BuiltinExpert):
    """Edges in [-1, 1]: 1 on an edge, -1 elsewhere (the paper's edge maps are binary-like)."""

    spec = ExpertSpec(
        name="edge",
        version="1.0",
        kind=ExpertKind.DENSE,
        channels=1,
        description="Edges by the Canny detector (OpenCV); no weights",
    )
    Options = EdgeOptions

    def check(self, options: EdgeOptions) -> Readiness:
        return require_modules("cv2", package="opencv-python")

    def predict(self, images: Sequence[np.ndarray], context: Mapping | None = None) -> list[DenseMap]:
        import cv2

        outputs = []
        for image in images:
            grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (3, 3), 0)
            edges = cv2.Canny(grey, self.options.low, self.options.high)
            outputs.append(DenseMap((edges.astype(np.float32) / 127.5 - 1.0)[..., None]))
        return outputs


@hookimpl
def register_experts(register):
    register(CannyEdges)
