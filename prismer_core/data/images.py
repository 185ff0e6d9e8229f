"""Finding and reading input images, with errors that name the file (and manifest line)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import PrismerError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class BadImageError(PrismerError):
    """An image that is missing, unreadable or corrupt."""


class BadInputError(PrismerError):
    """An input folder or manifest that cannot be used."""


@dataclass(frozen=True)
class ImageSource:
    """One input image: ``key`` names it inside a label store, ``where`` names it for people."""

    key: str
    path: Path
    where: str = ""

    @property
    def label(self) -> str:
        return self.where or str(self.path)


def image_key(path: str | Path, root: str | Path | None = None) -> str:
    """A stable, relative, '/'-separated key for an image, used as its name in a label store."""
    path = Path(path)
    if root is not None and not path.is_absolute():
        rel = PurePosixPath(path.as_posix())
    elif root is not None:
        try:
            rel = PurePosixPath(path.resolve().relative_to(Path(root).resolve()).as_posix())
        except ValueError:
            rel = PurePosixPath(path.resolve().as_posix().lstrip("/"))
    else:
        rel = PurePosixPath(path.as_posix().lstrip("/"))
    parts = [p for p in rel.parts if p not in ("", ".", "..")]
    if not parts:
        raise BadInputError(f"cannot derive a key from image path {str(path)!r}")
    return "/".join(parts)


def list_images(input_path: str | Path) -> list[ImageSource]:
    """List the images of a folder (recursively, sorted) or of a JSONL manifest with 'image'."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise BadInputError(f"input not found: {input_path}")
    if input_path.is_dir():
        files = sorted(
            p for p in input_path.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise BadInputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in folder {input_path}")
        return [ImageSource(image_key(p.relative_to(input_path), input_path), p) for p in files]
    if input_path.suffix.lower() in {".jsonl", ".json"}:
        return list_manifest_images(input_path)
    if input_path.suffix.lower() in IMAGE_SUFFIXES:
        return [ImageSource(image_key(input_path.name, input_path.parent), input_path)]
    raise BadInputError(f"input {input_path} is neither a folder of images, an image, nor a JSONL manifest")


def list_manifest_images(manifest: Path) -> list[ImageSource]:
    """Read the 'image' field of each JSONL line; paths are relative to the manifest."""
    sources: list[ImageSource] = []
    seen: set[str] = set()
    with open(manifest, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{manifest}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                raise BadInputError(f"{where}: a manifest line needs an 'image' field with a path")
            path = Path(row["image"])
            full = path if path.is_absolute() else manifest.parent / path
            key = image_key(path if not path.is_absolute() else full, manifest.parent)
            if key not in seen:
                seen.add(key)
                sources.append(ImageSource(key, full, where))
    if not sources:
        raise BadInputError(f"manifest {manifest} lists no images")
    return sources


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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"cannot read image {name}: {exc}") from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadImageError(f"image {name} is empty")
    return array
