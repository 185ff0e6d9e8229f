"""An on-disk cache of text embeddings (sqlite), so each label is embedded once per embedder.

Rows are keyed by (embedder identity, text); a new model version gets new rows and never reads
vectors of another. sqlite handles several processes (data-loader workers, training ranks)
reading and writing the same file; a connection is opened per call so none crosses a fork.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track

from ..paths import home
from .embedder import EmbedderError, TextEmbedder

#: Embed this many texts per model call.
BATCH_SIZE = 256
#: Show a progress bar when at least this many texts must be embedded.
PROGRESS_FROM = 1024
_QUERY_CHUNK = 500  # stay under sqlite's limit on bound parameters


class EmbeddingCache:
    """label -> vector for every embedder identity, in ``<PRISMER_HOME>/embeddings.sqlite``."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else home() / "embeddings.sqlite"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            with db:  # one transaction, committed on success
                db.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings (embedder TEXT NOT NULL, text TEXT NOT NULL, "
                    "vector BLOB NOT NULL, PRIMARY KEY (embedder, text)) WITHOUT ROWID"
                )
                yield db

    def get(self, identity: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``texts`` (missing ones are simply absent)."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(texts))
        with self._connect() as db:
            for start in range(0, len(unique), _QUERY_CHUNK):
                chunk = unique[start : start + _QUERY_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT text, vector FROM embeddings WHERE embedder = ? AND text IN ({marks})",
                    [identity, *chunk],
                )
                for text, blob in rows:
                    found[text] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, identity: str, vectors: dict[str, np.ndarray]) -> None:
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO embeddings (embedder, text, vector) VALUES (?, ?, ?)",
                [(identity, text, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for text, v in vectors.items()],
            )

    def count(self, identity: str) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM embeddings WHERE embedder = ?", [identity]).fetchone()[0]

    def embed(self, embedder: TextEmbedder, texts: Sequence[str], *, show_progress: bool = True) -> np.ndarray:
        """Vectors for ``texts`` (float32 ``[N, dim]``): cached ones read back, the misses
        embedded in batches and stored."""
        identity = embedder.identity
        found = self.get(identity, texts)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            batches = [missing[i : i + BATCH_SIZE] for i in range(0, len(missing), BATCH_SIZE)]
            if show_progress and len(missing) >= PROGRESS_FROM:
                batches = track(
                    batches,
                    description=f"embedding {len(missing)} labels with {embedder.name}",
                    console=Console(stderr=True),
                    transient=True,
                )
            for batch in batches:
                vectors = checked_embedding(embedder, batch)
                fresh = dict(zip(batch, vectors, strict=True))
                self.put(identity, fresh)
                found.update(fresh)
        out = np.stack([found[t] for t in texts]) if texts else np.zeros((0, embedder.dim), np.float32)
        if out.shape[1] != embedder.dim:
            raise EmbedderError(
                f"embedding cache {self.path} holds {out.shape[1]}-wide vectors for '{identity}', "
                f"but the embedder gives {embedder.dim}; delete the file to rebuild it"
            )
        return out


def checked_embedding(embedder: TextEmbedder, texts: list[str]) -> np.ndarray:
    """Call the embedder and check what it returned, naming it when it is wrong."""
    vectors = np.asarray(embedder.embed(list(texts)))
    expected = (len(texts), embedder.dim)
    if vectors.shape != expected:
        raise EmbedderError(f"text embedder '{embedder.name}' returned shape {vectors.shape}, expected {expected}")
    if not np.isfinite(vectors).all():
        raise EmbedderError(f"text embedder '{embedder.name}' returned NaN or infinite values")
    return vectors.astype(np.float32, copy=False)
