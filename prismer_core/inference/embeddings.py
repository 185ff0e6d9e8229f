"""Image embeddings kept on disk, and nearest-neighbour search over unit vectors.

Embedding an image runs its experts and the vision encoder; a text runs only the small text
pass. So the embeddings of a folder of images are computed once per model and stored:

    <PRISMER_HOME>/image-embeddings/<model identity>.safetensors
        keys     uint8 [N, 32]   the SHA-256 of each image file's bytes (its content key)
        vectors  float32 [N, D]  the unit-length embedding of that image

The model identity (:func:`model_identity`) is a hash of everything an image embedding
depends on: the checkpoint's weights (their recorded SHA-256) and spec, its experts' versions
and settings, and the precision. Another checkpoint, or the same one run in bf16, gets a file
of its own; a moved or renamed image is found by its bytes. Writes are atomic (the whole file
is rewritten and renamed into place); two processes adding images at once may each keep only
their own additions, which only costs a recomputation later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..errors import PrismerError
from ..paths import home

STORE_FORMAT = "prismer-image-embeddings"


def default_store_root() -> Path:
    """``<PRISMER_HOME>/image-embeddings``."""
    return home() / "image-embeddings"


def model_identity(weights_sha256: str, spec: Mapping[str, Any], experts: Mapping[str, Any], precision: str) -> str:
    """A hex digest naming what an image embedding depends on (module docstring)."""
    record = {"weights": weights_sha256, "spec": spec, "experts": experts, "precision": precision}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


class ImageEmbeddingStore:
    """The stored image embeddings of one model identity, by image content key."""

    def __init__(self, root: str | Path, identity: str) -> None:
        self.root = Path(root)
        self.identity = identity
        self.path = self.root / f"{identity[:32]}.safetensors"
        self._vectors: dict[str, torch.Tensor] | None = None

    def _load(self) -> dict[str, torch.Tensor]:
        if self._vectors is None:
            self._vectors = self._read() if self.path.is_file() else {}
        return self._vectors

    def _read(self) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                keys, vectors = handle.get_tensor("keys"), handle.get_tensor("vectors")
        except (SafetensorError, OSError, KeyError) as exc:
            raise PrismerError(f"image embedding store {self.path} is damaged ({exc}); delete it to rebuild it") from None
        if metadata.get("format") != STORE_FORMAT or metadata.get("identity") != self.identity:
            raise PrismerError(f"{self.path} is not the image embedding store of this model; delete it to rebuild it")
        if keys.ndim != 2 or keys.shape[1] != 32 or vectors.ndim != 2 or len(keys) != len(vectors):
            raise PrismerError(f"image embedding store {self.path} is damaged (keys {tuple(keys.shape)}, "
                               f"vectors {tuple(vectors.shape)}); delete it to rebuild it")
        return {bytes(key.tolist()).hex(): vector for key, vector in zip(keys, vectors)}

    def __len__(self) -> int:
        return len(self._load())

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The stored vectors among ``keys`` (missing ones are absent)."""
        stored = self._load()
        return {key: stored[key] for key in keys if key in stored}

    def put(self, vectors: Mapping[str, torch.Tensor]) -> None:
        """Add vectors (by content key) and rewrite the file atomically."""
        from safetensors.torch import save_file

        if not vectors:
            return
        stored = self._load()
        widths = {int(v.shape[-1]) for v in [*stored.values(), *vectors.values()]}
        if len(widths) != 1:
            raise PrismerError(f"image embedding store {self.path}: vectors of widths {sorted(widths)} for one model")
        stored.update({key: vector.detach().to("cpu", torch.float32).contiguous() for key, vector in vectors.items()})
        keys = torch.tensor([list(bytes.fromhex(key)) for key in stored], dtype=torch.uint8)
        tensors = {"keys": keys, "vectors": torch.stack(list(stored.values()))}
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": STORE_FORMAT, "identity": self.identity})


@dataclass(frozen=True)
class Match:
    """One retrieved item: its position in the gallery, its name, its cosine similarity."""

    index: int
    name: str
    score: float


def nearest(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` gallery rows most similar to each query (unit vectors: by dot product), best
    first: (scores [Q, k], indices [Q, k]).

    An exact matrix product, in chunks of queries. No index library (faiss) is used: for the
    sets this serves, one query against a folder or an evaluation split, an exact index would
    compute the same product; where an approximate index starts to pay has not been measured.
    """
    if gallery.ndim != 2 or queries.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise PrismerError(f"cannot compare queries {tuple(queries.shape)} with a gallery {tuple(gallery.shape)}")
    k = min(k, gallery.shape[0])
    scores, indices = [], []
    for start in range(0, queries.shape[0], chunk):
        top = torch.topk(queries[start : start + chunk].float() @ gallery.float().T, k, dim=1, sorted=True)
        scores.append(top.values)
        indices.append(top.indices)
    if not scores:
        return torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.long)
    return torch.cat(scores), torch.cat(indices)
