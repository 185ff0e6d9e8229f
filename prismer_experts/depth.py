"""`depth`: monocular depth from a transformers depth-estimation model (DPT, Depth Anything, …).

The model's prediction is resized to the image and stretched per image onto [-1, 1] with
1 = nearest and -1 = farthest (relative depth models predict inverse depth, where larger is
nearer; metric models predict distance, which is flipped to the same convention).

Weights: setting ``model`` (``--set depth.model=…`` or ``PRISMER_DEPTH_MODEL``) is a saved
transformers model folder or a hub id already in the local Hugging Face cache, for example
``depth-anything/Depth-Anything-V2-Small-hf`` or ``Intel/dpt-hybrid-midas`` (the paper's
DPT); default ``$PRISMER_WEIGHTS_DIR/depth``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import ConfigurableExpert, DenseMap, ExpertOptions, ExpertSpec, Readiness, hookimpl

from ._models import CPU_AND_GPU, find_pretrained_folder, groups_by_shape, quiet_hub_loading, to_unit_range, torch_dtype


class DepthOptions(ExpertOptions):
    """Settings of the `depth` expert (``--set depth.KEY=VALUE`` or ``PRISMER_DEPTH_KEY``)."""

    #: transformers depth-estimation model: local folder or cached hub id
    model: str | None = None
    #: run in float16 on a GPU
    half: bool = True


class Depth(ConfigurableExpert):
    """Relative depth per pixel, 1 = nearest, -1 = farthest."""

    spec = ExpertSpec.dense("depth", "1.0", channels=1, needs_weights=True, devices=CPU_AND_GPU,
                            description="Monocular depth (transformers DPT / Depth Anything), 1 = near")
    Options = DepthOptions

    def _model_location(self, options: DepthOptions) -> tuple[str | None, Readiness]:
        return find_pretrained_folder(
            options.model, expert="depth", key="model", what="transformers depth-estimation model",
            default_name="depth", example="depth-anything/Depth-Anything-V2-Small-hf",
        )

    def check(self, options: DepthOptions) -> Readiness:
        missing = Readiness.requiring("torch", "transformers")
        return missing if not missing.ready else self._model_location(options)[1]

    def load(self, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        location, readiness = self._model_location(self.options)
        if location is None:
            raise RuntimeError(str(readiness))
        self.dtype = torch_dtype(device, self.options.half)
        with quiet_hub_loading():
            self.processor = AutoImageProcessor.from_pretrained(location, local_files_only=True)
            self.model = AutoModelForDepthEstimation.from_pretrained(location, local_files_only=True)
        self.model.to(device=device, dtype=self.dtype).eval()
        self.device = device
        config = self.model.config
        self.near_is_large = not (
            getattr(config, "depth_estimation_type", "relative") == "metric" or config.model_type == "zoedepth"
        )

    def predict(self, images: Sequence[np.ndarray], context: Mapping | None = None) -> list[DenseMap]:
        import torch

        if not hasattr(self, "model"):
            self.load()
        # Processors keep each image's aspect ratio, so images of different sizes are
        # batched separately rather than padded (padding would shift the prediction).
        # (np.array: a writable copy; torch warns about read-only arrays such as decoded images)
        pixels = [self.processor(images=np.array(image), return_tensors="pt")["pixel_values"] for image in images]
        outputs: list[DenseMap | None] = [None] * len(images)
        for group in groups_by_shape(pixels):
            batch = torch.cat([pixels[i] for i in group]).to(device=self.device, dtype=self.dtype)
            with torch.inference_mode():
                predicted = self.model(pixel_values=batch)
                predicted["predicted_depth"] = predicted["predicted_depth"].float()
                resized = self.processor.post_process_depth_estimation(
                    predicted, target_sizes=[images[i].shape[:2] for i in group]
                )
            for i, result in zip(group, resized):
                depth = result["predicted_depth"].cpu().numpy()
                outputs[i] = DenseMap(to_unit_range(depth if self.near_is_large else -depth)[..., None])
        return outputs  # type: ignore[return-value]


@hookimpl
def register_experts(register):
    register(Depth)
