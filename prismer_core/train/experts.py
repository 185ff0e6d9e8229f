"""Check a run's experts before any work starts, and say for each unusable one why and what to do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..experts.contract import ExpertSpec
from ..registry import ExpertUnavailableError, Registry, get_registry


def require_experts(
    names: Sequence[str],
    live: bool,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
) -> dict[str, ExpertSpec]:
    """The specs of ``names``, in order.

    ``live`` (experts run during training) needs every expert, and the experts they depend
    on, to be ready here; reading maps from a label store only needs them installed, so their
    versions can be checked against the store. Problems with several experts are reported
    together, each with its reason and fix. Unknown names raise
    :class:`~prismer_core.registry.UnknownExpertError` with close matches.
    """
    registry = registry or get_registry()
    settings = settings or {}
    order = registry.resolve(names) if live else list(names)
    problems = []
    for name in order:
        entry = registry.entry(name)
        if entry.status != "ok":
            problems.append(f"'{name}' ({entry.plugin.package}): {entry.status}: {entry.reason}")
        elif live:
            readiness = entry.readiness(**dict(settings.get(name, {})))
            if not readiness.ready:
                needed_by = [n for n in names if n != name and name in registry.resolve([n])]
                why = f" (needed by {', '.join(needed_by)})" if needed_by and name not in names else ""
                problems.append(f"'{name}'{why} ({entry.plugin.package}): not ready: {readiness}")
    if problems:
        raise ExpertUnavailableError(f"cannot use these experts: {'; '.join(problems)}")
    return {name: registry.entry(name).spec for name in names}  # type: ignore[misc]
