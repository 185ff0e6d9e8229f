"""Text embedders: turn label strings into vectors, the first step of a 64-channel semantic map.

An embedder is a plugin like an expert: a :class:`TextEmbedder` subclass registered through the
``register_text_embedders`` hook. Its :attr:`~TextEmbedder.identity` names the model exactly,
because the embedding cache and the fitted projection are both keyed by it.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..errors import PrismerError, did_you_mean
from ..experts.contract import Readiness
from ..experts.settings import merged_settings
from ..registry import LOAD_PLUGINS_ENV, Registry, get_registry

#: Names the embedder to use when no argument does; otherwise the ready one of highest priority.
EMBEDDER_ENV = "PRISMER_TEXT_EMBEDDER"


class EmbedderError(PrismerError):
    """No usable text embedder: unknown name, not ready, or none installed."""


class TextEmbedder(ABC):
    """Embeds label strings. Subclasses set ``name`` and implement ``identity``, ``dim``, ``embed``.

    The constructor must stay cheap (listing and readiness checks instantiate embedders); load
    the model lazily on the first :meth:`embed`. Settings arrive as keyword arguments and must
    be JSON values: :meth:`settings_to_save` is what a saved projection records, so the same
    embedder can be rebuilt where the projection is loaded.
    """

    #: Short name users pass (``load_label_encoder("minilm")``, ``PRISMER_TEXT_EMBEDDER``).
    name: ClassVar[str]
    #: The default embedder is the ready one with the highest priority.
    priority: ClassVar[int] = 0
    description: ClassVar[str] = ""

    def __init__(self, **settings: Any) -> None:
        self.settings: dict[str, Any] = dict(settings)

    @property
    @abstractmethod
    def identity(self) -> str:
        """Stable name of the exact model (name + source/version); keys caches and projections."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of one embedding vector."""

    def readiness(self) -> Readiness:
        """Whether :meth:`embed` can run here without downloading anything."""
        return Readiness.ok()

    @abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``; return float32 of shape ``[len(texts), dim]``."""

    def settings_to_save(self) -> dict[str, Any]:
        """The settings that rebuild this embedder elsewhere (recorded in saved projections);
        ``device`` is left out, as it belongs to the machine, not to the model."""
        return {key: value for key, value in self.settings.items() if key != "device"}


def file_fingerprint(*paths: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """A cheap, stable content fingerprint of weight files: size plus first and last MiB.

    Hashing a whole multi-GB checkpoint on every start would cost seconds; this still changes
    when a file is replaced by another model, and not when it is merely moved or renamed.
    """
    digest = hashlib.sha256()
    for path in paths:
        size = os.path.getsize(path)
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(chunk))
            if size > chunk:
                handle.seek(max(chunk, size - chunk))
                digest.update(handle.read(chunk))
    return digest.hexdigest()[:12]


def embedder_names(registry: Registry | None = None) -> list[str]:
    return sorted((registry or get_registry()).embedders)


def create_embedder(name: str | None = None, registry: Registry | None = None, **settings: Any) -> TextEmbedder:
    """The embedder called ``name``, else ``$PRISMER_TEXT_EMBEDDER``, else the best ready one.

    A named embedder that is not ready is an error saying why; the automatic choice takes the
    ready embedder with the highest ``priority`` (CLIP when its weights are here, else MiniLM).
    Like experts, embedders take defaults from ``PRISMER_<NAME>_<KEY>`` variables
    (``PRISMER_CLIP_PRETRAINED=/weights/clip.safetensors``); explicit settings win.
    """
    registry = registry or get_registry()
    name = name or os.environ.get(EMBEDDER_ENV) or None
    if not registry.embedders:
        restricted = os.environ.get(LOAD_PLUGINS_ENV)
        hint = f" ({LOAD_PLUGINS_ENV}={restricted!r} may exclude them)" if restricted is not None else ""
        raise EmbedderError(f"no text embedder is installed{hint}; semantic maps need one")
    if name is not None:
        embedder = _instantiate(registry, name, settings)
        readiness = _readiness(embedder)
        if not readiness.ready:
            raise EmbedderError(f"text embedder '{name}' is not ready: {readiness}")
        return embedder
    if settings:
        raise EmbedderError(f"embedder settings {sorted(settings)} need an embedder name to apply to")
    reasons = []
    for entry in _by_priority(registry):
        try:
            embedder = _instantiate(registry, entry.name, {})
        except EmbedderError as exc:
            reasons.append(str(exc))
            continue
        readiness = _readiness(embedder)
        if readiness.ready:
            return embedder
        reasons.append(f"{entry.name}: {readiness}")
    raise EmbedderError(f"no text embedder is ready ({'; '.join(reasons)})")


def describe_embedders(registry: Registry | None = None) -> list[dict[str, Any]]:
    """One row per registered embedder, in the order the automatic choice tries them:
    name, package, priority, readiness, identity (when ready) and whether it is the default."""
    registry = registry or get_registry()
    chosen = os.environ.get(EMBEDDER_ENV) or None
    rows = []
    for entry in _by_priority(registry):
        row: dict[str, Any] = {
            "name": entry.name,
            "package": entry.plugin.package,
            "priority": getattr(entry.cls, "priority", 0),
            "description": getattr(entry.cls, "description", ""),
            "ready": False,
            "status": "",
            "identity": None,
        }
        try:
            embedder = _instantiate(registry, entry.name, {})
            readiness = _readiness(embedder)
            row["ready"], row["status"] = readiness.ready, str(readiness)
            if readiness.ready:
                row["identity"] = embedder.identity
        except EmbedderError as exc:
            row["status"] = str(exc)
        if chosen is None and row["ready"]:
            chosen = entry.name
        rows.append(row)
    for row in rows:
        row["default"] = row["name"] == chosen
    return rows


def _by_priority(registry: Registry) -> list[Any]:
    return sorted(registry.embedders.values(), key=lambda e: (-getattr(e.cls, "priority", 0), e.name))


def _instantiate(registry: Registry, name: str, settings: dict[str, Any]) -> TextEmbedder:
    entry = registry.embedders.get(name)
    if entry is None:
        known = sorted(registry.embedders)
        raise EmbedderError(f"unknown text embedder '{name}'{did_you_mean(name, known, n=3)} (available: {', '.join(known)})")
    if not (isinstance(entry.cls, type) and issubclass(entry.cls, TextEmbedder)):
        raise EmbedderError(
            f"text embedder '{name}' from {entry.plugin.package} is broken: "
            f"{entry.cls!r} is not a prismer_core.semantic.TextEmbedder"
        )
    try:
        return entry.cls(**merged_settings(name, settings))
    except TypeError as exc:
        raise EmbedderError(f"text embedder '{name}': bad settings {settings}: {exc}") from None


def _readiness(embedder: TextEmbedder) -> Readiness:
    try:
        readiness = embedder.readiness()
    except Exception as exc:  # a plugin's fault must not hide the other embedders
        return Readiness.missing(f"broken: readiness check raised {exc!r}")
    if not isinstance(readiness, Readiness):
        return Readiness.missing("broken: readiness() did not return a Readiness")
    return readiness


def safe_name(identity: str) -> str:
    """A file name for an identity: readable characters kept, plus a hash so none collide."""
    readable = "".join(c if c.isalnum() or c in "._-" else "_" for c in identity)[:80]
    return f"{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"
