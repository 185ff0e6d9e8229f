"""One crop, flip and resize for an image and all of its expert maps, so they stay aligned.

torchvision's ``transforms.v2`` draws one set of random parameters per call and applies it to
every input, choosing the interpolation by type: the RGB image and dense maps are
``tv_tensors.Image`` (bilinear, antialiased), label and instance maps are ``tv_tensors.Mask``
(nearest, so no label is ever blended into another).

Randomness comes from a per-sample seed (not the global RNG), so a resumed run, or a run
with another number of workers, sees exactly the same crops.

A horizontal flip turns "left" into "right". Flipping is off by default; when it is turned
on, the words ``left`` and ``right`` in the sample's text are swapped on flipped samples, so
the text stays true (see :func:`swap_left_right`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import PrismerError
from ..experts.contract import DenseMap, ExpertOutput, SemanticMap


@dataclass
class AlignedMaps:
    """An image and its expert maps after the shared transform (tensors, channels first)."""

    rgb: torch.Tensor  # [3, S, S] float in [0, 1]
    dense: dict[str, torch.Tensor] = field(default_factory=dict)  # [C, S, S] float in [-1, 1]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)  # [S, S] int64
    instances: dict[str, torch.Tensor] = field(default_factory=dict)  # [S, S] int64
    flipped: bool = False


class PairedTransform:
    """Random resized crop (training) or plain resize (evaluation), then an optional flip.

    ``crop_scale`` is the range of the crop's area as a share of the image, as in
    :class:`torchvision.transforms.v2.RandomResizedCrop`; ``hflip`` the probability of a
    horizontal flip.
    """

    def __init__(
        self,
        size: int,
        train: bool = True,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.0,
    ) -> None:
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise PrismerError(f"crop scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        if not 0.0 <= hflip <= 1.0:
            raise PrismerError(f"flip probability must lie in [0, 1], got {hflip}")
        self.size, self.train, self.crop_scale, self.hflip = size, train, crop_scale, hflip
        if train:
            self.geometry: v2.Transform = v2.RandomResizedCrop((size, size), scale=crop_scale, antialias=True)
        else:
            self.geometry = v2.Resize((size, size), antialias=True)

    def __call__(self, image: np.ndarray, maps: Mapping[str, ExpertOutput], seed: int) -> AlignedMaps:
        """Transform ``image`` (H×W×3 uint8) and ``maps`` (the experts' outputs) alike."""
        inputs = {
            "rgb": tv_tensors.Image(_tensor(image).permute(2, 0, 1)),
            "dense": {}, "labels": {}, "instances": {},
        }
        for name, output in maps.items():
            if isinstance(output, DenseMap):
                inputs["dense"][name] = tv_tensors.Image(_tensor(output.data).permute(2, 0, 1))
            elif isinstance(output, SemanticMap):
                inputs["labels"][name] = tv_tensors.Mask(torch.from_numpy(output.labels.astype(np.int64)))
                if output.instances is not None:
                    inputs["instances"][name] = tv_tensors.Mask(torch.from_numpy(output.instances.astype(np.int64)))
        generator = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed also seeds every other device kind
            # (90-103 against 1.0 µs a call here; the crop draws on the CPU either way)
            torch.default_generator.manual_seed(int(generator.integers(2**62)))
            out = self.geometry(inputs)
        flipped = self.train and bool(generator.random() < self.hflip)
        if flipped:
            out = {
                "rgb": F.horizontal_flip(out["rgb"]),
                **{group: {n: F.horizontal_flip(t) for n, t in out[group].items()} for group in ("dense", "labels", "instances")},
            }
        return AlignedMaps(
            rgb=out["rgb"].as_subclass(torch.Tensor).float().div_(255.0),
            dense={n: t.as_subclass(torch.Tensor).float() for n, t in out["dense"].items()},
            labels={n: t.as_subclass(torch.Tensor) for n, t in out["labels"].items()},
            instances={n: t.as_subclass(torch.Tensor) for n, t in out["instances"].items()},
            flipped=flipped,
        )


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing memory with ``array`` when it can (copied if read-only, e.g. from PIL)."""
    return torch.from_numpy(np.ascontiguousarray(array) if array.flags.writeable else np.array(array))


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """'on the left' <-> 'on the right', keeping capitalisation: the text of a flipped image."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, text)


def normalise(rgb: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Standardise a [3, S, S] image in [0, 1] with the model's mean and std."""
    return F.normalize(rgb, mean=list(mean), std=list(std))
