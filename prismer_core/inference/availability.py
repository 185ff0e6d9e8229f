"""Which of a checkpoint's experts can run here, and for each one that cannot, why and what to do.

    for expert in checkpoint_experts(read_checkpoint_info(folder)):
        print(expert.name, expert.state, expert.reason, expert.install)

``prismer experts check RUN`` prints this; ``Predictor.from_checkpoint(missing_experts="drop")``
runs with the usable experts and records the reasons of the others. The install line comes
from the distribution the checkpoint recorded for the expert when it was written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointInfo
from ..data.label_store import LabelStore
from ..errors import PrismerError
from ..model_card import install_line
from ..registry import LOAD_PLUGINS_ENV, Registry, get_registry

#: States of an expert here, the usable one first.
STATES = ("ready", "not ready", "not installed", "hidden", "other version", "broken")


@dataclass(frozen=True)
class ExpertAvailability:
    name: str
    version: str  # the version the checkpoint was trained with
    provided_by: str  # "prismer-saliency 1.0.0", or "" when the checkpoint did not record it
    state: str  # one of STATES
    reason: str = ""  # why it cannot run ("" when it can)
    install: str | None = None  # the pip line that would provide it, when that is the fix

    @property
    def usable(self) -> bool:
        return self.state == "ready"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "provided_by": self.provided_by, "state": self.state,
                "reason": self.reason, "install": self.install, "usable": self.usable}


def checkpoint_experts(
    info: CheckpointInfo,
    *,
    labels: str | Path | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
) -> list[ExpertAvailability]:
    """One entry per expert of the checkpoint. With ``labels`` (a label store) an expert needs
    to be installed at the trained version and to have labels there, not to be ready to run."""
    registry = registry or get_registry()
    return [_one(name, info, labels, settings or {}, registry) for name in info.experts]


def _one(name: str, info: CheckpointInfo, labels: str | Path | None, settings: Mapping[str, Mapping[str, Any]],
         registry: Registry) -> ExpertAvailability:
    trained = info.experts[name]
    recorded = info.provided_by.get(name) or {}
    provider = f"{recorded.get('distribution', '')} {recorded.get('version', '')}".strip()
    line = install_line(recorded)

    def state(kind: str, reason: str = "", install: str | None = None) -> ExpertAvailability:
        return ExpertAvailability(name, trained.version, provider, kind, reason, install)

    entry = registry.experts.get(name)
    if entry is None:
        if name in registry.hidden:
            return state("hidden", f"its plugin ({registry.hidden[name]}) is installed, but "
                                   f"{LOAD_PLUGINS_ENV}={os.environ.get(LOAD_PLUGINS_ENV, '')} leaves it out")
        failed = registry.plugins.get(name)
        if failed is not None and failed.status != "ok":
            return state("broken", f"plugin '{failed.name}' ({failed.package}) is broken: {failed.reason}", line)
        fix = f"{line}" if line else "the checkpoint does not record which package provided it; look for a plugin that provides it"
        return state("not installed", f"not installed ({fix})", line)
    if entry.status != "ok":
        return state("broken", f"{entry.plugin.package}: {entry.status}: {entry.reason}", line)
    if entry.spec.record() != trained.record():
        here = entry.spec.record()
        changed = ", ".join(f"{key} {here[key]} here" for key in here if here[key] != trained.record()[key])
        return state("other version", f"{entry.plugin.package} provides {name} with {changed}; the checkpoint was "
                                      f"trained with version {trained.version}", line)
    if labels is not None:
        try:
            LabelStore(labels).check_versions({name: trained})
        except PrismerError as exc:
            return state("not ready", str(exc))
        return state("ready")
    readiness = registry.readiness(name, settings)
    if not readiness.ready:
        return state("not ready", f"not ready: {readiness}")
    return state("ready")
