"""Semantic label maps to H×W×64 float maps: embed each label once, project, index the map."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PrismerError
from ..experts.contract import SemanticMap
from ..paths import home
from ..registry import Registry, get_registry
from .cache import EmbeddingCache
from .embedder import EmbedderError, TextEmbedder, create_embedder, safe_name
from .projection import CHANNELS, Projection
from .vocabulary import BACKGROUND_TEXT, fitting_vocabulary, normalize_label


def projection_path(embedder_identity: str) -> Path:
    """Where the fitted projection of an embedder lives: ``<PRISMER_HOME>/projections/``."""
    return home() / "projections" / f"{safe_name(embedder_identity)}.safetensors"


class LabelEncoder:
    """Turns :class:`SemanticMap` outputs into 64-channel maps with one fixed projection.

    Vectors are looked up in memory, then in the on-disk cache; only labels never seen before
    reach the embedder, which is created (and its model loaded) on the first such label.
    """

    channels: int = CHANNELS

    def __init__(
        self,
        projection: Projection,
        embedder: TextEmbedder | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        if embedder is not None and embedder.identity != projection.embedder_identity:
            raise EmbedderError(_mismatch(projection, embedder))
        self.projection = projection
        self._embedder = embedder
        self.cache = cache or EmbeddingCache()
        self._rows: dict[str, np.ndarray] = {}

    @property
    def identity(self) -> str:
        return self.projection.identity

    @property
    def embedder_identity(self) -> str:
        return self.projection.embedder_identity

    @property
    def embedder(self) -> TextEmbedder:
        """The embedder the projection was fitted with, rebuilt from its recorded settings."""
        if self._embedder is None:
            embedder = create_embedder(self.projection.embedder, **self.projection.embedder_settings)
            if embedder.identity != self.projection.embedder_identity:
                raise EmbedderError(_mismatch(self.projection, embedder))
            self._embedder = embedder
        return self._embedder

    def vectors(self, names: Sequence[str]) -> np.ndarray:
        """float32 ``[len(names), 64]``: the projected embedding of each label."""
        keys = [normalize_label(n) for n in names]
        missing = [k for k in dict.fromkeys(keys) if k not in self._rows]
        if missing:
            found = self.cache.get(self.embedder_identity, missing)
            unknown = [k for k in missing if k not in found]
            if unknown:
                found.update(zip(unknown, self.cache.embed(self.embedder, unknown), strict=True))
            projected = self.projection.project(np.stack([found[k] for k in missing]))
            self._rows.update(zip(missing, projected, strict=True))
        if not keys:
            return np.zeros((0, CHANNELS), np.float32)
        return np.stack([self._rows[k] for k in keys])

    def table(self, names: Sequence[str]) -> np.ndarray:
        """float32 ``[len(names) + 1, 64]``: row 0 is background, row k is ``names[k - 1]``.

        Index it with a label map (``table[labels]``) after resizing the map with nearest
        neighbours, so augmentation never blends two labels.
        """
        return np.concatenate([self.projection.background[None], self.vectors(names)])

    def encode(self, semantic_map: SemanticMap) -> np.ndarray:
        """float32 H×W×64 in [-1, 1] for one image's label map and its names."""
        labels, table = self.compact(semantic_map)
        return table[labels]

    def compact(self, semantic_map: SemanticMap) -> tuple[np.ndarray, np.ndarray]:
        """The map as int32 H×W row ids and its table (``table(names)``): what a batch carries,
        ``encode``'s result being ``table[labels]`` (never made in the model)."""
        labels = np.asarray(semantic_map.labels)
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise PrismerError(f"a label map must be a 2-D integer array, got {labels.dtype} {labels.shape}")
        names = list(semantic_map.names)
        if labels.size and (labels.min() < 0 or labels.max() > len(names)):
            raise PrismerError(
                f"label map values run from {labels.min()} to {labels.max()}, "
                f"but only {len(names)} label names were given (0 is background)"
            )
        return labels.astype(np.int32, copy=False), self.table(names)

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the projection (with its identity and embedder) to ``path``, e.g. a checkpoint."""
        return self.projection.save(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        embedder: TextEmbedder | None = None,
        cache: EmbeddingCache | None = None,
    ) -> "LabelEncoder":
        """The encoder saved at ``path``. Its embedder is rebuilt from the recorded settings
        when a label must be embedded, unless one is passed (it must have the same identity)."""
        return cls(Projection.load(path), embedder, cache)

    def __repr__(self) -> str:
        return f"LabelEncoder({self.identity!r})"


def load_label_encoder(
    embedder: str | TextEmbedder | None = None,
    *,
    registry: Registry | None = None,
    cache: EmbeddingCache | None = None,
    **settings: Any,
) -> LabelEncoder:
    """The label encoder of an embedder, fitting and saving its projection the first time.

    ``embedder`` is a registered name (settings go to it), an instance, or None for
    ``$PRISMER_TEXT_EMBEDDER`` or else the best ready embedder. A projection once fitted for an
    embedder identity is reused as is, even when plugins with new vocabularies appear, so that
    every run with that embedder agrees with the checkpoints it trained.
    """
    registry = registry or get_registry()
    if not isinstance(embedder, TextEmbedder):
        embedder = create_embedder(embedder, registry=registry, **settings)
    elif settings:
        raise PrismerError("pass settings to the embedder's constructor, not with an embedder instance")
    cache = cache or EmbeddingCache()
    path = projection_path(embedder.identity)
    if path.is_file():
        return LabelEncoder(Projection.load(path), embedder, cache)
    vocabulary = fitting_vocabulary(registry)
    vectors = cache.embed(embedder, [*vocabulary, BACKGROUND_TEXT])
    projection = Projection.fit(
        vectors[:-1],
        vectors[-1],
        vocabulary,
        embedder=embedder.name,
        embedder_identity=embedder.identity,
        embedder_settings=embedder.settings_to_save(),
    )
    projection.save(path)
    return LabelEncoder(projection, embedder, cache)


def _mismatch(projection: Projection, embedder: TextEmbedder) -> str:
    return (
        f"label projection {projection.identity} was fitted with text embedder "
        f"'{projection.embedder_identity}', but '{embedder.identity}' was given"
    )
