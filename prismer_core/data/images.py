"""Images as the readers find them, and as they are read: pixels, a content key, a name.

Every reader (folders, manifests, tar shards, the predictor's arguments) turns an image into
an :class:`ImageRef`: a file, a member of a tar shard, or pixels already in memory. Loading one
gives a :class:`LoadedImage` whose ``key`` is the SHA-256 of the file's bytes, so the same
file has the same key however it is reached (``photos/00053.png`` or
``images/train/00053.png``): label stores are keyed by it. Errors name the file (and the
manifest line it came from).
"""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import PrismerError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class BadImageError(PrismerError):
    """An image that is missing, unreadable or corrupt."""


class BadInputError(PrismerError):
    """An input folder or manifest that cannot be used."""


def content_key(data: bytes) -> str:
    """The label-store key of an image file: the SHA-256 of its bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LoadedImage:
    """An image read: H×W×3 uint8 pixels, its content key (None for pixels given in memory)
    and its name for people."""

    pixels: np.ndarray
    key: str | None
    where: str


class ImageRef(ABC):
    """Where an image is: ``name`` names it in reports, ``where`` in messages (file:line)."""

    name: str
    where: str

    @abstractmethod
    def load(self) -> LoadedImage:
        """The pixels and content key, or :class:`BadImageError` naming the image."""

    def content_key(self) -> str | None:
        """The content key alone (files are read and hashed, not decoded): what caches of
        per-image results look up before doing any work."""
        return self.load().key

    @property
    def label(self) -> str:
        return self.where or self.name

    @property
    def source(self) -> str:
        """Where the bytes are (two rows naming one file share it)."""
        return self.label


@dataclass(frozen=True)
class ImageFile(ImageRef):
    path: Path
    name: str = ""
    where: str = ""

    @property
    def source(self) -> str:
        return str(self.path)

    def load(self) -> LoadedImage:
        label, data = self._bytes()
        return LoadedImage(decode_rgb(data, label), content_key(data), label)

    def content_key(self) -> str | None:
        return content_key(self._bytes()[1])

    def _bytes(self) -> tuple[str, bytes]:
        label = self.where or str(self.path)
        if self.where and str(self.path) not in self.where:
            label = f"{self.where} ({self.path})"
        try:
            return label, self.path.read_bytes()
        except FileNotFoundError:
            raise BadImageError(f"image not found: {label}") from None
        except OSError as exc:
            raise BadImageError(f"cannot read image {label}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class TarMember(ImageRef):
    """An image inside a tar shard, read back by byte offset (nothing is unpacked)."""

    shard: Path
    offset: int
    size: int
    name: str = ""
    where: str = ""

    @property
    def source(self) -> str:
        return f"{self.shard}@{self.offset}"

    def load(self) -> LoadedImage:
        data = self._bytes()
        return LoadedImage(decode_rgb(data, self.label), content_key(data), self.label)

    def content_key(self) -> str | None:
        return content_key(self._bytes())

    def _bytes(self) -> bytes:
        try:
            with open(self.shard, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.size)
        except OSError as exc:
            raise BadImageError(f"cannot read image {self.label}: {exc.strerror or exc}") from None
        if len(data) != self.size:
            raise BadImageError(f"cannot read image {self.label}: the shard is truncated")
        return data


@dataclass(frozen=True, eq=False)
class ImagePixels(ImageRef):
    """Pixels a caller already holds (a PIL image, an array): no file, so no content key."""

    pixels: np.ndarray
    name: str = ""
    where: str = ""

    def load(self) -> LoadedImage:
        return LoadedImage(self.pixels, None, self.label)

    def content_key(self) -> str | None:
        return None


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """Decode image file bytes as H×W×3 uint8 RGB, or raise BadImageError naming ``where``."""
    return read_rgb(io.BytesIO(data), where)


def read_rgb(path: str | Path | BinaryIO, where: str = "") -> np.ndarray:
    """Read an image (a path, or an open binary file) as an H×W×3 uint8 RGB array, or raise
    BadImageError naming it."""
    name = where or str(path)
    if where and isinstance(path, (str, Path)) and str(path) not in where:
        name = f"{where} ({path})"
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise BadImageError(f"image not found: {name}") from None
    except UnidentifiedImageError:
        raise BadImageError(f"cannot read image {name}: not an image file Pillow can decode") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"cannot read image {name}: {exc}") from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadImageError(f"image {name} is empty")
    return array
