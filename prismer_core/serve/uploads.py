"""Uploaded images: size and pixel limits checked before decoding, errors a person can act on."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import BadImageError, read_rgb
from ..errors import PrismerError


class UploadError(PrismerError):
    """An upload the page refuses: too big, too many pixels (``too_large``), empty, or not an image."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class UploadLimits:
    """The largest upload the page takes: ``max_bytes`` of file, ``max_pixels`` once decoded
    (a small PNG can hold a huge image; the pixel count is read from the header first)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise PrismerError(f"upload limits must be positive, got {self.max_bytes} bytes and {self.max_pixels} pixels")

    def describe(self) -> str:
        return f"{megabytes(self.max_bytes)} MB and {megapixels(self.max_pixels)} megapixels"

    def check_size(self, size: int, name: str) -> None:
        if size > self.max_bytes:
            raise UploadError(f"{name} is {megabytes(size)} MB; the largest upload is {megabytes(self.max_bytes)} MB", too_large=True)


def decode_upload(data: bytes, name: str, limits: UploadLimits) -> np.ndarray:
    """The upload as an H×W×3 uint8 RGB array, or an :class:`UploadError` naming ``name``."""
    if not data:
        raise UploadError(f"{name} is empty (0 bytes)")
    limits.check_size(len(data), name)
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except Image.DecompressionBombError:
        raise UploadError(f"{name} has far more pixels than the limit of {megapixels(limits.max_pixels)} megapixels", too_large=True) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UploadError(f"{name} is not an image this page can read ({_reason(exc)})") from None
    if width * height > limits.max_pixels:
        raise UploadError(
            f"{name} is {width}×{height} = {megapixels(width * height)} megapixels; "
            f"the limit is {megapixels(limits.max_pixels)} megapixels",
            too_large=True,
        )
    try:
        return read_rgb(io.BytesIO(data), where=name)
    except BadImageError as exc:
        raise UploadError(str(exc)) from None
    except Image.DecompressionBombError:  # a header that lied about its size
        raise UploadError(f"{name} decodes to more pixels than its header says", too_large=True) from None


def megabytes(size: int) -> str:
    return f"{size / 2**20:.3g}"


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "its bytes are no known image format"
    return str(exc) or type(exc).__name__
