"""`edge`: classical edge detection (Canny on a lightly blurred grey image), no weights needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import DenseMap, Expert, ExpertKind, ExpertSpec, Readiness, hookimpl

from ._common import require_modules


class CannyEdges(Expert):
    """Edges in [-1, 1]: 1 on an edge, -1 elsewhere (the paper's edge maps are binary-like).

    Settings: ``low``/``high`` Canny thresholds (default: chosen per image from its median).
    """

    spec = ExpertSpec(
        name="edge",
        version="1.0",
        kind=ExpertKind.DENSE,
        channels=1,
        description="Edges by the Canny detector (OpenCV); no weights",
    )

    def readiness(self) -> Readiness:
        return require_modules("cv2", package="opencv-python")

    def predict(self, images: Sequence[np.ndarray], context: Mapping | None = None) -> list[DenseMap]:
        import cv2

        outputs = []
        for image in images:
            grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (3, 3), 0)
            low, high = self._thresholds(grey)
            edges = cv2.Canny(grey, low, high)
            outputs.append(DenseMap((edges.astype(np.float32) / 127.5 - 1.0)[..., None]))
        return outputs

    def _thresholds(self, grey: np.ndarray) -> tuple[float, float]:
        if "low" in self.settings and "high" in self.settings:
            return float(self.settings["low"]), float(self.settings["high"])
        median = float(np.median(grey))
        return max(10.0, 0.66 * median), max(30.0, min(255.0, 1.33 * median))


@hookimpl
def register_experts(register):
    register(CannyEdges)
