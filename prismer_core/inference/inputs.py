"""What users hand the predictor, as image references: paths, PIL images, arrays, samples.

Each becomes an :class:`~prismer_core.data.images.ImageRef` (read on demand); a file's label
store key is its content hash, so a label store finds its maps whatever the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from ..data.images import BadImageError, ImageFile, ImagePixels, ImageRef
from ..data.manifest import Sample
from ..errors import PrismerError

#: What the predictor accepts as an image.
ImageLike = Union[str, Path, np.ndarray, "PIL.Image.Image", Sample, ImageRef]  # noqa: F821


def as_inputs(images: ImageLike | Sequence[ImageLike]) -> list[ImageRef]:
    """Wrap each image; a path must name an existing file (checked before any work)."""
    from PIL import Image

    if isinstance(images, (str, Path, np.ndarray, Image.Image, Sample, ImageRef)):
        images = [images]
    refs: list[ImageRef] = []
    for index, image in enumerate(images):
        if isinstance(image, Sample):
            refs.append(image.image)
        elif isinstance(image, ImageRef):
            refs.append(image)
        elif isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():  # before any work, not after the images before it
                raise BadImageError(f"image not found: {path}")
            refs.append(ImageFile(path, path.name, str(path)))
        elif isinstance(image, Image.Image):
            refs.append(ImagePixels(np.asarray(image.convert("RGB")), f"image {index}", f"image {index} (PIL)"))
        elif isinstance(image, np.ndarray):
            refs.append(ImagePixels(_checked_array(image, index), f"image {index}", f"image {index} (array)"))
        else:
            raise PrismerError(f"image {index}: expected a path, a PIL image or an H×W×3 uint8 array, got {type(image).__name__}")
    return refs


def _checked_array(array: np.ndarray, index: int) -> np.ndarray:
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise BadImageError(f"image {index} (array): expected H×W×3 uint8 RGB, got {array.dtype} {array.shape}")
    return array
