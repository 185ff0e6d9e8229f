"""The PCA that turns text embeddings into 64 channels, as Prismer does with CLIP text features.

Fitted once per embedder on a broad vocabulary and saved as safetensors; training and inference
must use the very same file, so it carries its own identity, that of its embedder, and the
settings that rebuild the embedder. Values are scaled so the fitted vocabulary spans [-1, 1];
words outside it are clipped to that range.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import PrismerError

CHANNELS = 64
FORMAT = "prismer-label-projection/1"


class ProjectionError(PrismerError):
    """A projection file that cannot be used (missing, corrupt, or fitted for another embedder)."""


def projection_identity(embedder_identity: str, vocabulary: Sequence[str]) -> str:
    """``<embedder identity>-<sha256(embedder identity + sorted vocabulary)[:12]>``."""
    digest = hashlib.sha256(embedder_identity.encode())
    for word in sorted(vocabulary):
        digest.update(b"\n" + word.encode())
    return f"{embedder_identity}-{digest.hexdigest()[:12]}"


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Projection:
    """``project(v) = clip(scale * (unit(v) - mean) @ components.T, -1, 1)``, plus background."""

    mean: np.ndarray  # [D]
    components: np.ndarray  # [CHANNELS, D], principal axes with a fixed sign
    scale: float
    background: np.ndarray  # [CHANNELS]
    identity: str
    embedder: str
    embedder_identity: str
    embedder_settings: dict[str, Any] = field(default_factory=dict)
    vocabulary_size: int = 0

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        background: np.ndarray,
        vocabulary: Sequence[str],
        *,
        embedder: str,
        embedder_identity: str,
        embedder_settings: dict[str, Any] | None = None,
    ) -> "Projection":
        """Fit on ``vectors`` (one row per ``vocabulary`` word); ``background`` is the
        embedding of the background text. Deterministic: same inputs, same file."""
        if len(vectors) != len(vocabulary):
            raise ValueError(f"{len(vectors)} vectors for {len(vocabulary)} words")
        if len(vectors) <= CHANNELS or np.shape(vectors)[1] < CHANNELS:
            raise ProjectionError(
                f"a {CHANNELS}-channel projection needs more than {CHANNELS} words and embeddings at least "
                f"{CHANNELS} wide; got {len(vectors)} words of width {np.shape(vectors)[1]}"
            )
        unit = _unit_rows(vectors)
        mean = unit.mean(axis=0)
        _, _, vt = np.linalg.svd(unit - mean, full_matrices=False)
        components = vt[:CHANNELS]
        # An SVD axis may come out as +v or -v; pin the sign so every fit writes the same file.
        strongest = np.argmax(np.abs(components), axis=1)
        components = components * np.sign(components[np.arange(CHANNELS), strongest])[:, None]
        spread = float(np.abs((unit - mean) @ components.T).max())
        projection = cls(
            mean=mean.astype(np.float32),
            components=components.astype(np.float32),
            scale=1.0 / spread,
            background=np.zeros(CHANNELS, np.float32),
            identity=projection_identity(embedder_identity, vocabulary),
            embedder=embedder,
            embedder_identity=embedder_identity,
            embedder_settings=dict(embedder_settings or {}),
            vocabulary_size=len(vocabulary),
        )
        return replace(projection, background=projection.project(np.asarray(background)[None])[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Embeddings ``[N, D]`` -> float32 ``[N, 64]`` in [-1, 1]."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ProjectionError(
                f"projection {self.identity} takes {self.dim}-wide embeddings, got shape {vectors.shape}"
            )
        projected = (_unit_rows(vectors) - self.mean) @ self.components.T.astype(np.float64) * self.scale
        return np.clip(projected, -1.0, 1.0).astype(np.float32)

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a self-contained safetensors file atomically; return its path."""
        from safetensors.numpy import save

        tensors = {
            "mean": self.mean,
            "components": self.components,
            "scale": np.array([self.scale], np.float32),
            "background": self.background,
        }
        metadata = {
            "format": FORMAT,
            "identity": self.identity,
            "embedder": self.embedder,
            "embedder_identity": self.embedder_identity,
            "embedder_settings": json.dumps(self.embedder_settings, sort_keys=True),
            "channels": str(CHANNELS),
            "vocabulary_size": str(self.vocabulary_size),
        }
        path = Path(path)
        write_bytes_atomic(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Projection":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise ProjectionError(f"label projection file not found: {path}")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ProjectionError(f"{path} is not a readable safetensors file: {exc}") from None
        if metadata.get("format") != FORMAT:
            raise ProjectionError(f"{path} is not a Prismer label projection (format {metadata.get('format')!r})")
        try:
            projection = cls(
                mean=tensors["mean"],
                components=tensors["components"],
                scale=float(tensors["scale"][0]),
                background=tensors["background"],
                identity=metadata["identity"],
                embedder=metadata["embedder"],
                embedder_identity=metadata["embedder_identity"],
                embedder_settings=json.loads(metadata.get("embedder_settings") or "{}"),
                vocabulary_size=int(metadata.get("vocabulary_size", 0)),
            )
        except (KeyError, ValueError, IndexError) as exc:
            raise ProjectionError(f"{path}: incomplete label projection ({exc!r})") from None
        dim = projection.dim
        if projection.components.shape != (CHANNELS, dim) or projection.background.shape != (CHANNELS,):
            raise ProjectionError(f"{path}: label projection tensors have unexpected shapes")
        return projection
