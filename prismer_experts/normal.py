"""`normal`: surface normals, from a learned model when one is configured, else from `depth`.

Output: unit vectors in camera space, x to the right, y up, z towards the camera, so each
channel lies in [-1, 1] and a wall facing the camera is (0, 0, 1).

- Learned (setting ``model``): a Marigold normals pipeline through diffusers (for example
  ``prs-eth/marigold-normals-v1-1``), a saved pipeline folder or a hub id already in the
  local Hugging Face cache; default ``$PRISMER_WEIGHTS_DIR/normal`` when that folder exists.
- Geometric (no model): the `depth` expert's map is read as a height field facing the camera,
  scaled so that its full range spans ``relief`` image widths (the depth map is relative, so
  the true scale is unknown), and the normal is that of the surface:
  ``n ∝ (-dz/dx, dz/dy, 1)`` with x right and y down in pixels. It needs no weights of its
  own, but `depth` must be ready: the expert always declares it as a dependency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import ConfigurableExpert, DenseMap, ExpertOptions, ExpertOutput, ExpertSpec, Readiness, hookimpl

from ._models import CPU_AND_GPU, find_pretrained_folder, groups_by_shape, quiet_hub_loading, torch_dtype, under_weights_dir


class NormalOptions(ExpertOptions):
    """Settings of the `normal` expert (``--set normal.KEY=VALUE`` or ``PRISMER_NORMAL_KEY``)."""

    #: Marigold normals pipeline (folder or cached hub id); unset: geometric, from `depth`
    model: str | None = None
    #: geometric: how many image widths the depth map's full range [-1, 1] spans
    relief: float = 0.5
    #: geometric: Gaussian smoothing (pixels) of the depth map before differentiating
    smooth: float = 1.0
    #: learned: denoising steps and ensemble size (None: the pipeline's defaults)
    steps: int | None = None
    ensemble: int = 1
    #: learned: run in float16 on a GPU
    half: bool = True

    def check(self) -> str | None:
        if self.relief <= 0:
            return f"relief must be positive, got {self.relief}"
        if self.smooth < 0:
            return f"smooth must be >= 0, got {self.smooth}"
        return None


def normals_from_depth(depth: np.ndarray, relief: float = 0.5, smooth: float = 1.0) -> np.ndarray:
    """Unit normals (H×W×3, x right, y up, z to the camera) of a depth map in [-1, 1], 1 = near."""
    import cv2

    depth = depth.astype(np.float32)
    if smooth > 0:
        depth = cv2.GaussianBlur(depth, (0, 0), smooth, borderType=cv2.BORDER_REPLICATE)
    size = max(depth.shape)
    height = depth * (relief * size / 2.0)  # toward the camera, in pixels
    dz_dy, dz_dx = np.gradient(height)
    normals = np.stack([-dz_dx, dz_dy, np.ones_like(height)], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return normals.astype(np.float32)


class Normal(ConfigurableExpert):
    """Surface normals in camera space (x right, y up, z to the camera)."""

    spec = ExpertSpec.dense("normal", "1.0", channels=3, devices=CPU_AND_GPU, depends_on=("depth",),
                            description="Surface normals: Marigold (diffusers) when configured, else geometric from depth")
    Options = NormalOptions

    def learned(self, options: NormalOptions) -> bool:
        default = under_weights_dir("normal")
        return bool(options.model) or (default is not None and (default / "model_index.json").is_file())

    def _model_location(self, options: NormalOptions) -> tuple[str | None, Readiness]:
        return find_pretrained_folder(
            options.model, expert="normal", key="model", what="Marigold normals pipeline",
            default_name="normal", example="prs-eth/marigold-normals-v1-1", marker="model_index.json",
        )

    def check(self, options: NormalOptions) -> Readiness:
        if not self.learned(options):
            return Readiness.requiring("cv2", package="opencv-python")
        missing = Readiness.requiring("torch", "transformers", "diffusers", extra="normal")
        return missing if not missing.ready else self._model_location(options)[1]

    def load(self, device: str = "cpu") -> None:
        self.pipeline = None
        if not self.learned(self.options):
            return
        from diffusers import MarigoldNormalsPipeline

        location, readiness = self._model_location(self.options)
        if location is None:
            raise RuntimeError(str(readiness))
        dtype = torch_dtype(device, self.options.half)
        with quiet_hub_loading():
            self.pipeline = MarigoldNormalsPipeline.from_pretrained(location, dtype=dtype, local_files_only=True)
        self.pipeline.to(device)
        self.pipeline.set_progress_bar_config(disable=True)

    def predict(
        self, images: Sequence[np.ndarray], context: Mapping[str, Sequence[ExpertOutput]] | None = None
    ) -> list[DenseMap]:
        if not hasattr(self, "pipeline"):
            self.load()
        if self.pipeline is not None:
            return self._predict_learned(images)
        depths = (context or {}).get("depth")
        if depths is None or len(depths) != len(images):
            raise ValueError("the geometric normal expert needs the 'depth' expert's output as context")
        options = self.options
        return [DenseMap(normals_from_depth(depth.data[..., 0], options.relief, options.smooth)) for depth in depths]

    def _predict_learned(self, images: Sequence[np.ndarray]) -> list[DenseMap]:
        outputs: list[DenseMap | None] = [None] * len(images)
        for group in groups_by_shape(images):  # the pipeline batches images of one size only
            result = self.pipeline(
                [images[i].astype(np.float32) / 255.0 for i in group],
                num_inference_steps=self.options.steps,
                ensemble_size=self.options.ensemble,
                batch_size=len(group),
                output_type="np",
            )
            for i, normals in zip(group, np.asarray(result.prediction, dtype=np.float32)):
                outputs[i] = DenseMap(np.clip(normals, -1.0, 1.0))
        return outputs  # type: ignore[return-value]


@hookimpl
def register_experts(register):
    register(Normal)
