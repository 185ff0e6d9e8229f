"""Where Prismer keeps caches and weights on disk; one place so every part agrees."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$PRISMER_HOME``, else ``~/.cache/prismer``: embedding caches and fitted projections."""
    return Path(os.environ.get("PRISMER_HOME") or Path.home() / ".cache" / "prismer")


def weights_dir() -> Path | None:
    """``$PRISMER_WEIGHTS_DIR`` when set: where experts look for local weight files."""
    value = os.environ.get("PRISMER_WEIGHTS_DIR")
    return Path(value) if value else None
