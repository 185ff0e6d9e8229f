"""`edge`: edges, by the Canny detector (default, no weights) or a learned HED network.

- ``backend=canny``: Canny on a lightly blurred grey image; 1 on an edge, -1 elsewhere.
- ``backend=hed``: the HED network of prismer_experts.hed (the Prismer paper's edge expert
  is HED); soft edges, edge probability p mapped to 2p - 1. Weights (setting ``model``): the
  ControlNet annotator's ``ControlNetHED.pth`` (lllyasviel/Annotators on the Hugging Face hub)
  or the same tensors as .safetensors; default ``$PRISMER_WEIGHTS_DIR/ControlNetHED.pth``.
  A .pth is read with ``weights_only=True``: only tensors, no code.

Both backends write into the same `edge` maps; a label store records the settings its labels
were made with and refuses to mix others in, so label into a new store when switching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import ConfigurableExpert, DenseMap, ExpertOptions, ExpertSpec, Readiness, hookimpl

from ._models import CPU_AND_GPU, find_weights_file, groups_by_shape, load_state_dict, torch_dtype

BACKENDS = ("canny", "hed")


class EdgeOptions(ExpertOptions):
    """Settings of the `edge` expert (``--set edge.KEY=VALUE`` or ``PRISMER_EDGE_KEY``)."""

    backend: str = "canny"
    #: canny: hysteresis thresholds on the Sobel gradient of the grey image (0-255); the
    #: defaults are those of the ControlNet canny annotator
    low: float = 100.0
    high: float = 200.0
    #: hed: the weights file (.pth state dict or .safetensors)
    model: str | None = None
    #: hed: run in float16 on a GPU
    half: bool = True

    def check(self) -> str | None:
        if self.backend not in BACKENDS:
            return f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
        if not 0 <= self.low <= self.high:
            return f"Canny thresholds need 0 <= low <= high, got low={self.low}, high={self.high}"
        return None


class Edges(ConfigurableExpert):
    """Edges in [-1, 1]: 1 on an edge, -1 elsewhere (soft values in between for HED)."""

    spec = ExpertSpec.dense("edge", "1.0", channels=1, devices=CPU_AND_GPU,
                            description="Edges: Canny (OpenCV, no weights) or HED (setting backend=hed)")
    Options = EdgeOptions

    def _weights(self, options: EdgeOptions):
        return find_weights_file(
            options.model, expert="edge", key="model", what="HED weights",
            default_names=("ControlNetHED.pth", "ControlNetHED.safetensors"),
            source="ControlNetHED.pth from the lllyasviel/Annotators repository on the Hugging Face hub",
        )

    def check(self, options: EdgeOptions) -> Readiness:
        if options.backend == "canny":
            return Readiness.requiring("cv2", package="opencv-python")
        missing = Readiness.requiring("torch")
        return missing if not missing.ready else self._weights(options)[1]

    def load(self, device: str = "cpu") -> None:
        self.network = None
        if self.options.backend != "hed":
            return
        from .hed import HedNet

        path, readiness = self._weights(self.options)
        if path is None:
            raise RuntimeError(str(readiness))
        network = HedNet()
        network.load_state_dict(load_state_dict(path))
        self.dtype = torch_dtype(device, self.options.half)
        self.network = network.to(device=device, dtype=self.dtype).eval()
        self.device = device

    def predict(self, images: Sequence[np.ndarray], context: Mapping | None = None) -> list[DenseMap]:
        if not hasattr(self, "network"):
            self.load()
        if self.network is not None:
            return self._predict_hed(images)
        import cv2

        outputs = []
        for image in images:
            grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (3, 3), 0)
            edges = cv2.Canny(grey, self.options.low, self.options.high)
            outputs.append(DenseMap((edges.astype(np.float32) / 127.5 - 1.0)[..., None]))
        return outputs

    def _predict_hed(self, images: Sequence[np.ndarray]) -> list[DenseMap]:
        import torch

        outputs: list[DenseMap | None] = [None] * len(images)
        for group in groups_by_shape(images):
            batch = torch.from_numpy(np.stack([images[i] for i in group])).permute(0, 3, 1, 2)
            with torch.inference_mode():
                edges = self.network(batch.to(device=self.device, dtype=self.dtype)).float().cpu().numpy()
            for i, probability in zip(group, edges):
                outputs[i] = DenseMap((probability[0] * 2.0 - 1.0)[..., None].astype(np.float32))
        return outputs  # type: ignore[return-value]


@hookimpl
def register_experts(register):
    register(Edges)
