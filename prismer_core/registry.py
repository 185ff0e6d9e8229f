"""The plugin registry: loads entry points, collects experts and text embedders, keeps faults apart.

One path for everything: built-in experts are declared in the ``prismer`` entry-point group
exactly as a third-party package declares its own. A plugin that fails to import, or declares
an unusable spec, is recorded as broken with its reason; nothing else is affected.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PrismerError, did_you_mean
from .experts.contract import (
    CONTRACT_VERSION,
    MIN_CONTRACT_VERSION,
    Expert,
    ExpertSpec,
    Readiness,
    SpecError,
)

LOAD_PLUGINS_ENV = "PRISMER_LOAD_PLUGINS"


class UnknownExpertError(PrismerError, KeyError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        hint = did_you_mean(name, known, n=3)
        listed = ", ".join(sorted(known)) or "none installed"
        self.name = name
        super().__init__(f"unknown expert '{name}'{hint} (available: {listed})")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ExpertUnavailableError(PrismerError):
    """The expert exists but cannot be used: not ready, broken, incompatible or in conflict."""


@dataclass
class PluginRecord:
    """One loaded (or failed) entry point and what it provided."""

    name: str
    distribution: str
    version: str
    status: str = "ok"  # ok | broken
    reason: str = ""
    experts: list[str] = field(default_factory=list)
    embedders: list[str] = field(default_factory=list)

    @property
    def package(self) -> str:
        return f"{self.distribution} {self.version}".strip()


@dataclass
class ExpertEntry:
    """A registered expert class with where it came from and whether it may be used."""

    name: str
    plugin: PluginRecord
    cls: type[Expert] | None
    spec: ExpertSpec | None
    status: str = "ok"  # ok | broken | incompatible | conflict
    reason: str = ""

    def readiness(self, **settings: Any) -> Readiness:
        """Ask the expert; registration problems and exceptions become 'not ready' reasons."""
        if self.status != "ok":
            return Readiness.missing(f"{self.status}: {self.reason}")
        try:
            readiness = self.cls(**settings).readiness()  # type: ignore[misc]
        except Exception as exc:  # a plugin's fault must not break listing
            return Readiness.missing(f"broken: readiness check raised {exc!r}")
        if not isinstance(readiness, Readiness):
            return Readiness.missing("broken: readiness() did not return a Readiness")
        return readiness

    def status_text(self, **settings: Any) -> str:
        if self.status != "ok":
            return f"{self.status}: {self.reason}"
        readiness = self.readiness(**settings)
        return "ready" if readiness.ready else f"not ready: {readiness}"


@dataclass
class EmbedderEntry:
    name: str
    plugin: PluginRecord
    cls: type


class Registry:
    """Everything the installed plugins provide. Build one with :func:`load_registry`."""

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginRecord] = {}
        self.experts: dict[str, ExpertEntry] = {}
        self.embedders: dict[str, EmbedderEntry] = {}
        #: entry points installed but not loaded because PRISMER_LOAD_PLUGINS leaves them out:
        #: entry-point name -> its package ("prismer 0.1.0")
        self.hidden: dict[str, str] = {}

    # -- loading -----------------------------------------------------------------------
    def add_plugin(self, obj: object, name: str, distribution: str = "", version: str = "") -> PluginRecord:
        """Register an already imported plugin module or object (entry points use this too)."""
        record = PluginRecord(name, distribution or name, version)
        key = self._keep(record)
        try:
            self.plugin_manager.register(obj, name=key)
            self.plugin_manager.check_pending()  # a misspelt hook name is an error, not silence
        except Exception as exc:
            if self.plugin_manager.get_plugin(key) is obj:  # not one registered earlier
                self.plugin_manager.unregister(obj)
            record.status, record.reason = "broken", f"hook validation failed: {_one_line(exc)}"
            return record
        for impl in self.plugin_manager.hook.register_experts.get_hookimpls():
            if impl.plugin is obj:
                self._call(record, impl, lambda cls: self._add_expert(record, cls))
        for impl in self.plugin_manager.hook.register_text_embedders.get_hookimpls():
            if impl.plugin is obj:
                self._call(record, impl, lambda cls: self._add_embedder(record, cls))
        return record

    def _keep(self, record: PluginRecord) -> str:
        """Keep ``record`` under its entry-point name (qualified by its distribution on a clash).

        Two distributions may both name their entry point after the expert they provide; both
        are kept, and the expert-name clash is then reported as a conflict naming both.
        """
        key = record.name if record.name not in self.plugins else f"{record.name}@{record.distribution}"
        self.plugins[key] = record
        return key

    def _call(self, record: PluginRecord, impl: Any, register: Any) -> None:
        try:  # pluggy lets an implementation accept fewer arguments than the spec offers
            impl.function(**{arg: register for arg in impl.argnames if arg == "register"})
        except Exception as exc:
            record.status = "broken"
            record.reason = f"registration raised {_one_line(exc)}"

    def _add_expert(self, record: PluginRecord, cls: Any) -> None:
        spec = getattr(cls, "spec", None)
        name = getattr(spec, "name", None) or getattr(cls, "__name__", repr(cls))
        entry = ExpertEntry(str(name), record, cls, spec if isinstance(spec, ExpertSpec) else None)
        if not (isinstance(cls, type) and issubclass(cls, Expert)):
            entry.status, entry.reason = "broken", f"{cls!r} is not a subclass of prismer_core.Expert"
        elif entry.spec is None:
            entry.status, entry.reason = "broken", f"{cls.__name__}.spec is not an ExpertSpec"
        else:
            try:
                entry.spec.validate()
            except SpecError as exc:
                entry.status, entry.reason = "broken", f"bad spec: {exc}"
            else:
                version = entry.spec.contract_version
                if not MIN_CONTRACT_VERSION <= version <= CONTRACT_VERSION:
                    entry.status = "incompatible"
                    entry.reason = (
                        f"written for expert contract {version}; this prismer supports "
                        f"{MIN_CONTRACT_VERSION}..{CONTRACT_VERSION}"
                    )
        record.experts.append(entry.name)
        existing = self.experts.get(entry.name)
        if existing is not None:
            both = f"{existing.plugin.package} and {record.package}"
            for clash in (existing, entry):
                clash.status, clash.reason = "conflict", f"name '{entry.name}' is claimed by both {both}"
        self.experts[entry.name] = existing if existing is not None else entry

    def _add_embedder(self, record: PluginRecord, cls: Any) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            record.status, record.reason = "broken", f"text embedder {cls!r} has no name"
            return
        existing = self.embedders.get(name)
        if existing is not None:  # the first one stays: a later package cannot take over a name
            record.status = "broken"
            record.reason = (
                f"text embedder '{name}' is claimed by both {existing.plugin.package} and {record.package}"
            )
            return
        record.embedders.append(name)
        self.embedders[name] = EmbedderEntry(name, record, cls)

    # -- queries -----------------------------------------------------------------------
    def entry(self, name: str) -> ExpertEntry:
        try:
            return self.experts[name]
        except KeyError:
            pass
        failed = self.plugins.get(name)
        if failed is not None and failed.status != "ok":
            raise ExpertUnavailableError(
                f"expert '{name}' is unavailable: plugin '{failed.name}' ({failed.package}) "
                f"is broken: {failed.reason}"
            )
        raise UnknownExpertError(name, list(self.experts))

    def readiness(self, name: str, settings: Mapping[str, Mapping[str, Any]] | None = None) -> Readiness:
        """An expert's own readiness, then that of every expert it depends on (a dependency
        that cannot run makes the dependent one not ready, with the dependency's reason)."""
        settings = settings or {}
        own = self.entry(name).readiness(**settings.get(name, {}))
        if not own.ready:
            return own
        try:
            dependencies = self.resolve([name])[:-1]
        except PrismerError as exc:
            return Readiness.missing(f"its dependencies cannot be resolved: {exc}")
        for dependency in dependencies:
            needed = self.entry(dependency).readiness(**settings.get(dependency, {}))
            if not needed.ready:
                return Readiness.missing(f"needs expert '{dependency}', which is not ready: {needed.reason}", needed.fix)
        return own

    def create(self, name: str, **settings: Any) -> Expert:
        """Instantiate a usable, ready expert, or raise an error that says what to do."""
        entry = self.entry(name)
        readiness = entry.readiness(**settings)
        if not readiness.ready:
            raise ExpertUnavailableError(
                f"expert '{name}' ({entry.plugin.package}) is not usable: {readiness}"
            )
        return entry.cls(**settings)  # type: ignore[misc]

    def require(
        self, names: Sequence[str], live: bool, settings: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, ExpertSpec]:
        """The specs of ``names``, in order, checked before a run starts.

        ``live`` (experts run during training or inference) needs every expert, and the
        experts they depend on, to be ready here; reading maps from a label store only needs
        them installed, so their versions can be checked against the store. Problems with
        several experts are reported together, each with its reason and fix. Unknown names
        raise :class:`UnknownExpertError` with close matches.
        """
        settings = settings or {}
        order = self.resolve(names) if live else list(names)
        problems = []
        for name in order:
            entry = self.entry(name)
            if entry.status != "ok":
                problems.append(f"'{name}' ({entry.plugin.package}): {entry.status}: {entry.reason}")
            elif live:
                readiness = entry.readiness(**dict(settings.get(name, {})))
                if not readiness.ready:
                    needed_by = [n for n in names if n != name and name in self.resolve([n])]
                    why = f" (needed by {', '.join(needed_by)})" if needed_by and name not in names else ""
                    problems.append(f"'{name}'{why} ({entry.plugin.package}): not ready: {readiness}")
        if problems:
            raise ExpertUnavailableError(f"cannot use these experts: {'; '.join(problems)}")
        return {name: self.entry(name).spec for name in names}  # type: ignore[misc]

    def status_rows(self) -> list[dict[str, Any]]:
        """One row per expert, plus one per plugin that failed as a whole (name in brackets).

        ``state`` is one word for scripts (ready, not ready, broken, incompatible, conflict);
        ``reason`` says why it is not ready; ``status`` is the two together, for people.
        """
        rows = []
        for name in sorted(self.experts):
            entry = self.experts[name]
            spec = entry.spec
            readiness = self.readiness(name) if entry.status == "ok" else entry.readiness()
            state = entry.status if entry.status != "ok" else ("ready" if readiness.ready else "not ready")
            reason = entry.reason if entry.status != "ok" else ("" if readiness.ready else str(readiness))
            rows.append(
                {
                    "name": name,
                    "kind": spec.kind.value if spec else "?",
                    "channels": (64 if spec.is_semantic else spec.channels) if spec else None,
                    "package": entry.plugin.distribution,
                    "version": spec.version if spec else "",
                    "package_version": entry.plugin.version,
                    "plugin": entry.plugin.name,
                    "state": state,
                    "reason": reason,
                    "status": state if not reason else f"{state}: {reason}",
                    "ready": state == "ready",
                }
            )
        for record in sorted(self.plugins.values(), key=lambda r: r.name):
            if record.status != "ok":
                rows.append(
                    {
                        "name": f"({record.name})",
                        "kind": "",
                        "channels": None,
                        "package": record.distribution,
                        "version": "",
                        "package_version": record.version,
                        "plugin": record.name,
                        "state": "broken",
                        "reason": record.reason,
                        "status": f"broken: {record.reason}",
                        "ready": False,
                    }
                )
        return rows

    def specs_or_described(self, items: Sequence[str]) -> dict[str, ExpertSpec]:
        """Specs for ``items``: an installed expert by name, or one described inline as
        ``NAME=dense:CHANNELS``, ``NAME=semantic`` or ``NAME=semantic+instances`` (to count the
        parameters of a model with experts that are not installed here)."""
        experts: dict[str, ExpertSpec] = {}
        for item in items:
            name, _, description = item.partition("=")
            name = name.strip()
            if description:
                experts[name] = _described(name, description.strip())
                continue
            if name not in self.experts:
                installed = ", ".join(sorted(self.experts)) or "none"
                raise PrismerError(
                    f"expert '{name}' is not installed (installed: {installed}); "
                    f"to count it anyway describe it, e.g. {name}=dense:1 or {name}=semantic"
                )
            entry = self.experts[name]
            if entry.spec is None:
                raise PrismerError(f"expert '{name}' is {entry.status}: {entry.reason}")
            experts[name] = entry.spec
        return experts

    def resolve(self, names: Iterable[str]) -> list[str]:
        """Order experts so that each comes after the experts it depends on (added if needed)."""
        ordered: list[str] = []
        visiting: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in ordered:
                return
            if name in visiting:
                raise PrismerError(f"experts depend on each other in a cycle: {' -> '.join(chain + (name,))}")
            entry = self.entry(name)
            visiting.add(name)
            for dep in entry.spec.depends_on if entry.spec else ():
                visit(dep, chain + (name,))
            visiting.discard(name)
            ordered.append(name)

        for name in names:
            visit(name, ())
        return ordered


def parse_expert_names(text: str | Sequence[str]) -> list[str]:
    """Turn ``"depth, ocr,seg"`` (or a list) into ``['depth', 'ocr', 'seg']``, keeping order."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for part in (p.strip() for p in parts):
        if part and part not in names:
            names.append(part)
    return names


def _described(name: str, description: str) -> ExpertSpec:
    kind, _, rest = description.partition(":")
    kind, plus, flag = kind.partition("+")
    try:
        if kind == "dense" and not plus:
            spec = ExpertSpec.dense(name, "described", channels=int(rest or 1))
        elif kind == "semantic" and not rest and flag in ("", "instances"):
            spec = ExpertSpec.semantic(name, "described", open_vocabulary=True, has_instances=bool(flag))
        else:
            raise ValueError
        spec.validate()
    except (ValueError, SpecError):
        raise PrismerError(
            f"cannot read expert description {name}={description!r}: use dense:CHANNELS, semantic or semantic+instances"
        ) from None
    return spec


def _allowed(env_value: str | None, names: Iterable[str]) -> bool:
    if env_value is None:
        return True
    wanted = {_normalise(n) for n in env_value.split(",") if n.strip()}
    return any(_normalise(n) in wanted for n in names)


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()
    return text[0] if text else type(exc).__name__


def load_registry(entry_points: Iterable[md.EntryPoint] | None = None) -> Registry:
    """Load every plugin of the ``prismer`` entry-point group, honouring PRISMER_LOAD_PLUGINS."""
    registry = Registry()
    if entry_points is None:
        entry_points = md.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
    only = os.environ.get(LOAD_PLUGINS_ENV)
    for ep in sorted(entry_points, key=lambda e: e.name):
        dist_name = ep.dist.metadata["Name"] if ep.dist is not None else ep.value.split(":")[0]
        dist_version = ep.dist.version if ep.dist is not None else ""
        if not _allowed(only, (ep.name, dist_name)):
            registry.hidden[ep.name] = f"{dist_name} {dist_version}".strip()
            continue
        try:
            module = ep.load()
        except Exception as exc:
            record = PluginRecord(ep.name, dist_name, dist_version, "broken", f"import failed: {_one_line(exc)}")
            record.reason += f" [{_last_frame(exc)}]" if _last_frame(exc) else ""
            registry._keep(record)
            continue
        registry.add_plugin(module, ep.name, dist_name, dist_version)
    return registry


def _last_frame(exc: BaseException) -> str:
    """Where the plugin's own code failed (importlib's frozen frames say nothing)."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__)
        if f.filename != __file__ and not f.filename.startswith("<")
        and "importlib" not in Path(f.filename).parts
    ]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    return load_registry()
