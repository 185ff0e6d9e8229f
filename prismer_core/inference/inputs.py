"""Images in, model batches out: the same expert maps, resize and normalisation as training.

Users hand the predictor paths, PIL images, arrays or manifest samples; each becomes an
:class:`ImageInput` (pixels on demand, a key for label stores, a name for messages). Expert
maps come from the checkpoint's experts run on the fly (one batched call per chunk) or from a
label store; they then go through training's eval-mode transform
(:class:`~prismer_core.data.transforms.PairedTransform` with ``train=False``), semantic maps
through the checkpoint's own label encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ..data.images import BadImageError, image_key, read_rgb
from ..data.manifest import Sample, read_sample_image
from ..data.transforms import AlignedMaps, PairedTransform, normalise
from ..errors import PrismerError
from ..experts.contract import ExpertOutput, ExpertSpec, SemanticMap

#: What the predictor accepts as an image.
ImageLike = Union[str, Path, np.ndarray, "PIL.Image.Image", Sample]  # noqa: F821


@dataclass(frozen=True)
class ImageInput:
    """One image to run: its pixels (read on demand), its label-store key, its name for people."""

    source: Any  # Path | Sample | np.ndarray
    key: str | None
    where: str

    def read(self) -> np.ndarray:
        if isinstance(self.source, Sample):
            return read_sample_image(self.source)
        if isinstance(self.source, Path):
            return read_rgb(self.source)
        return self.source

    def as_sample(self) -> Sample:
        """The manifest sample a label source expects (live experts only use ``where``)."""
        if isinstance(self.source, Sample):
            return self.source
        if self.key is None:
            raise PrismerError(
                f"{self.where} has no name in a label store (it was given as pixels); "
                "pass image paths, or let the experts run on the fly (no label store)"
            )
        return Sample(self.key, self.where, "caption", self.source if isinstance(self.source, Path) else Path(self.where))


def as_inputs(images: ImageLike | Sequence[ImageLike], image_root: str | Path | None = None) -> list[ImageInput]:
    """Wrap each image; a path's label-store key is its path relative to ``image_root`` (the
    folder that was labelled) or, without one, its file name."""
    from PIL import Image

    if isinstance(images, (str, Path, np.ndarray, Image.Image, Sample)):
        images = [images]
    inputs = []
    for index, image in enumerate(images):
        if isinstance(image, Sample):
            inputs.append(ImageInput(image, image.key, image.where))
        elif isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():  # before any work, not after the images before it
                raise BadImageError(f"image not found: {path}")
            key = image_key(path.resolve(), image_root) if image_root is not None else image_key(path.name)
            inputs.append(ImageInput(path, key, str(path)))
        elif isinstance(image, Image.Image):
            inputs.append(ImageInput(np.asarray(image.convert("RGB")), None, f"image {index} (PIL)"))
        elif isinstance(image, np.ndarray):
            inputs.append(ImageInput(_checked_array(image, index), None, f"image {index} (array)"))
        else:
            raise PrismerError(f"image {index}: expected a path, a PIL image or an H×W×3 uint8 array, got {type(image).__name__}")
    return inputs


def _checked_array(array: np.ndarray, index: int) -> np.ndarray:
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise BadImageError(f"image {index} (array): expected H×W×3 uint8 RGB, got {array.dtype} {array.shape}")
    return array


class BatchBuilder:
    """Turns a chunk of :class:`ImageInput` into the model's batch dict."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        experts: Mapping[str, ExpertSpec],
        labels: Any = None,
        label_encoder: Any = None,
    ) -> None:
        """``labels`` is a live :class:`~prismer_core.experts.runner.ExpertRunner` or a
        :class:`~prismer_core.data.dataset.StoredLabels`; None only without experts."""
        if experts and labels is None:
            raise PrismerError("the model uses experts but no source of their maps was given")
        self.transform = PairedTransform(image_size, train=False)
        self.mean, self.std = list(mean), list(std)
        self.experts = dict(experts)
        self.labels = labels
        self.label_encoder = label_encoder

    def __call__(
        self, inputs: Sequence[ImageInput], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> dict[str, Any]:
        """The batch on ``device``, its image and maps in ``dtype`` (the model's precision)."""
        arrays = [item.read() for item in inputs]
        maps = self._maps(inputs, arrays)
        rows = [self._one(array, outputs) for array, outputs in zip(arrays, maps)]
        return {
            "rgb": torch.stack([r["rgb"] for r in rows]).to(device, dtype),
            "experts": {n: torch.stack([r["experts"][n] for r in rows]).to(device, dtype) for n in self.experts},
            "instances": {n: torch.stack([r["instances"][n] for r in rows]).to(device) for n in rows[0]["instances"]},
        }

    def _maps(self, inputs: Sequence[ImageInput], arrays: list[np.ndarray]) -> list[dict[str, ExpertOutput]]:
        if not self.experts:
            return [{} for _ in inputs]
        from ..experts.runner import ExpertRunner

        if isinstance(self.labels, ExpertRunner):  # one batched call per expert
            outputs = self.labels(arrays, [item.where for item in inputs])
            return [{name: outputs[name][i] for name in self.experts} for i in range(len(inputs))]
        return [self.labels(item.as_sample(), array) for item, array in zip(inputs, arrays)]

    def _one(self, image: np.ndarray, outputs: Mapping[str, ExpertOutput]) -> dict[str, Any]:
        aligned: AlignedMaps = self.transform(image, outputs, seed=0)  # eval mode: no randomness
        experts = dict(aligned.dense)
        for name, labels in aligned.labels.items():
            output = outputs[name]
            assert isinstance(output, SemanticMap)
            encoded = self.label_encoder.encode(SemanticMap(labels.numpy(), output.names))
            experts[name] = torch.from_numpy(encoded).permute(2, 0, 1).contiguous()
        instances = {
            name: aligned.instances.get(name, torch.zeros(aligned.rgb.shape[1:], dtype=torch.long))
            for name, spec in self.experts.items() if spec.has_instances
        }
        return {"rgb": normalise(aligned.rgb, self.mean, self.std), "experts": experts, "instances": instances}
