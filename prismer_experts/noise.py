"""`noise`: a control expert whose maps carry no information about the image.

The paper's robustness claim is that an expert whose output is useless costs Prismer (almost)
nothing: the model learns to ignore it. This expert makes that testable: its map is uniform
noise in [-1, 1], drawn from a generator seeded by a hash of the image's pixels (and the
``seed`` setting), so the same image always gets the same map and a label store can hold it,
while nothing in it depends on what the image shows. ``prismer demo --noise`` trains with
``edge,ocr,noise`` beside ``edge,ocr`` and reports the difference.

It registers through the ``prismer`` entry-point group like every other expert; it needs
nothing but NumPy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from prismer_core import ConfigurableExpert, DenseMap, ExpertOptions, ExpertSpec, hookimpl


class NoiseOptions(ExpertOptions):
    """Settings of the `noise` expert (``--set noise.KEY=VALUE`` or ``PRISMER_NOISE_KEY``)."""

    #: mixed into every image's hash: another seed, other noise
    seed: int = 0
    #: side of the square cells of constant noise, in pixels (1: every pixel its own value)
    cell: int = 1

    def check(self) -> str | None:
        return None if self.cell >= 1 else f"cell must be at least 1 pixel, got {self.cell}"


class Noise(ConfigurableExpert):
    """Uniform noise in [-1, 1], deterministic per image, independent of its content."""

    spec = ExpertSpec.dense("noise", "1.0", channels=1,
                            description="Control: uniform noise in [-1, 1], the same for the same image, carrying nothing about it")
    Options = NoiseOptions

    def predict(self, images: Sequence[np.ndarray], context: Mapping | None = None) -> list[DenseMap]:
        return [DenseMap(noise_map(image, self.options.seed, self.options.cell)) for image in images]


def noise_map(image: np.ndarray, seed: int = 0, cell: int = 1) -> np.ndarray:
    """H×W×1 float32 uniform noise for an H×W×3 uint8 image, seeded by its pixels and ``seed``."""
    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
    height, width = image.shape[:2]
    cells = rng.uniform(-1.0, 1.0, size=(-(-height // cell), -(-width // cell), 1)).astype(np.float32)
    return np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)[:height, :width]


@hookimpl
def register_experts(register):
    register(Noise)
