"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A reader (or a re-run after a kill) sees either the old file or the complete new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(target: str | os.PathLike[str], writer: Callable[[IO[bytes]], Any]) -> None:
    """Call ``writer(file)`` on a temporary file, fsync it, then rename it to ``target``."""
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        writer(handle)
        handle.flush()
        os.fsync(handle.fileno())


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    write_atomic(target, lambda f: f.write(data))


def write_json_atomic(target: str | os.PathLike[str], value: Any) -> None:
    write_bytes_atomic(target, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


@contextmanager
def staged_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target`` to fill; on success it takes the place
    of ``target`` (an existing one is moved aside, then removed), so a reader sees the old
    folder or the complete new one, never half of one. On failure nothing is left behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
