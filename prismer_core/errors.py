"""The one error base class the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrismerError(Exception):
    """A problem the user can act on (bad input, unknown expert, unusable plugin...)."""


def did_you_mean(name: str, known: Iterable[str], n: int = 1) -> str:
    """``"; did you mean 'lr'?"`` when ``name`` is close to a known one, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=0.5 if n > 1 else 0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
