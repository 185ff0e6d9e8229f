"""Helpers shared by the built-in experts, so no expert copies another."""

from __future__ import annotations

import importlib.util

from prismer_core.experts.contract import Readiness


def require_modules(*modules: str, extra: str | None = None, package: str | None = None) -> Readiness:
    """'not ready' naming the first missing module and the pip command that brings it."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            what = f"prismer[{extra}]" if extra else (package or module)
            return Readiness.missing(f"Python module '{module}' is not installed", f"pip install '{what}'")
    return Readiness.ok()
