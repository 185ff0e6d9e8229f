"""The expert contract: what an expert declares, what it returns, and how it says it is ready.

Every expert, built-in or third-party, subclasses :class:`Expert`. The core never imports a
concrete expert; it only sees these types. Bump :data:`CONTRACT_VERSION` when a change would
break plugins written against the previous one.
"""

from __future__ import annotations

import enum
import importlib.util
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Union

import numpy as np

from .settings import ExpertOptions, SettingError, merged_settings, parse_options

#: The contract version this core implements. A plugin declares the one it was written for.
CONTRACT_VERSION = 1
#: Oldest contract version this core still accepts.
MIN_CONTRACT_VERSION = 1

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ExpertKind(str, enum.Enum):
    """Dense experts give a float map; semantic experts give an integer label map."""

    DENSE = "dense"
    SEMANTIC = "semantic"


class SpecError(ValueError):
    """An expert declared a spec the core cannot accept."""


@dataclass(frozen=True)
class ExpertSpec:
    """What an expert declares about itself; checked by :meth:`validate` when it is registered.

    ``channels`` is the number of channels of a dense map. Semantic experts are turned into
    64-channel maps by the core, so they declare ``channels=1`` (one label per pixel).
    ``vocabulary`` lists the label strings a semantic expert can produce; an expert whose
    words are not known in advance (OCR, open-vocabulary) sets ``open_vocabulary=True``.
    ``depends_on`` names experts whose outputs this one reads (passed as ``context``).
    """

    name: str
    version: str
    kind: ExpertKind
    channels: int = 1
    description: str = ""
    vocabulary: tuple[str, ...] = ()
    open_vocabulary: bool = False
    has_instances: bool = False
    needs_weights: bool = False
    devices: tuple[str, ...] = ("cpu",)
    depends_on: tuple[str, ...] = ()
    contract_version: int = CONTRACT_VERSION

    @classmethod
    def dense(cls, name: str, version: str, channels: int, description: str = "", **declared: Any) -> "ExpertSpec":
        """A dense expert's spec: a float map of ``channels`` channels in [-1, 1]."""
        return cls(name, version, ExpertKind.DENSE, channels, description, **declared)

    @classmethod
    def semantic(cls, name: str, version: str, description: str = "", **declared: Any) -> "ExpertSpec":
        """A semantic expert's spec: one label per pixel, from a ``vocabulary`` (or
        ``open_vocabulary=True``), with ``has_instances=True`` when it separates objects."""
        return cls(name, version, ExpertKind.SEMANTIC, 1, description, **declared)

    def validate(self) -> None:
        """Raise :class:`SpecError` with a readable reason when the declaration is unusable."""
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise SpecError(
                f"name {self.name!r} must be lower-case letters, digits or '_' "
                "(starting with a letter, at most 32 characters)"
            )
        if not isinstance(self.version, str) or not self.version:
            raise SpecError(f"expert {self.name!r}: version must be a non-empty string")
        try:
            kind = ExpertKind(self.kind)
        except ValueError:
            raise SpecError(
                f"expert {self.name!r}: kind {self.kind!r} is not one of "
                f"{[k.value for k in ExpertKind]}"
            ) from None
        if not isinstance(self.channels, int) or self.channels < 1:
            raise SpecError(f"expert {self.name!r}: channels must be a positive integer")
        if kind is ExpertKind.SEMANTIC:
            if self.channels != 1:
                raise SpecError(f"expert {self.name!r}: a semantic expert declares channels=1")
            if not self.vocabulary and not self.open_vocabulary:
                raise SpecError(
                    f"expert {self.name!r}: a semantic expert needs a vocabulary "
                    "or open_vocabulary=True"
                )
        elif self.vocabulary or self.has_instances:
            raise SpecError(
                f"expert {self.name!r}: only semantic experts have a vocabulary or instances"
            )
        if self.name in self.depends_on:
            raise SpecError(f"expert {self.name!r} cannot depend on itself")

    @property
    def is_semantic(self) -> bool:
        return ExpertKind(self.kind) is ExpertKind.SEMANTIC

    def record(self) -> dict[str, Any]:
        """What label stores, checkpoints and run records keep of an expert: what its maps and
        its stem depend on."""
        return {
            "name": self.name,
            "version": self.version,
            "kind": ExpertKind(self.kind).value,
            "channels": self.channels,
            "has_instances": self.has_instances,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "ExpertSpec":
        """The parts of a spec a :meth:`record` keeps (enough to rebuild the expert's stem)."""
        kind = ExpertKind(record["kind"])
        return cls(
            name=record["name"],
            version=record["version"],
            kind=kind,
            channels=int(record["channels"]),
            has_instances=bool(record["has_instances"]),
            open_vocabulary=kind is ExpertKind.SEMANTIC,
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything the expert declares, for `prismer experts info` and JSON listings."""
        return {
            **self.record(),
            "description": self.description,
            "vocabulary_size": len(self.vocabulary),
            "open_vocabulary": self.open_vocabulary,
            "needs_weights": self.needs_weights,
            "devices": list(self.devices),
            "depends_on": list(self.depends_on),
            "contract_version": self.contract_version,
        }


@dataclass(frozen=True)
class Readiness:
    """Whether an expert can run now; when not, ``reason`` says why and ``fix`` what to do."""

    ready: bool
    reason: str = ""
    fix: str = ""

    @classmethod
    def ok(cls) -> "Readiness":
        return cls(True)

    @classmethod
    def missing(cls, reason: str, fix: str = "") -> "Readiness":
        return cls(False, reason, fix)

    @classmethod
    def requiring(cls, *modules: str, extra: str | None = None, package: str | None = None) -> "Readiness":
        """'not ready' naming the first of ``modules`` that is not installed and the pip command
        that brings it (``prismer[extra]``, or ``package``), else ready."""
        for module in modules:
            if importlib.util.find_spec(module) is None:
                what = f"prismer[{extra}]" if extra else (package or module)
                return cls.missing(f"Python module '{module}' is not installed", f"pip install '{what}'")
        return cls.ok()

    def __str__(self) -> str:
        if self.ready:
            return "ready"
        return f"{self.reason} ({self.fix})" if self.fix else self.reason


@dataclass
class DenseMap:
    """A float32 map of shape H×W×C with values in [-1, 1]."""

    data: np.ndarray


@dataclass
class SemanticMap:
    """An integer label map of shape H×W: 0 is background, ``k > 0`` means ``names[k - 1]``.

    ``instances`` (optional, H×W integers, 0 = none) separates objects of the same label.
    ``names`` is per image, so open-vocabulary experts can name words no list foresees.
    """

    labels: np.ndarray
    names: list[str] = field(default_factory=list)
    instances: np.ndarray | None = None


ExpertOutput = Union[DenseMap, SemanticMap]


def normalize_label(text: str) -> str:
    """One spelling per label, for every expert and the label embeddings alike: lower case,
    surrounding and repeated whitespace removed ("  Stop  Sign" -> "stop sign")."""
    return " ".join(str(text).lower().split())


class Expert(ABC):
    """A frozen, pre-trained model that turns RGB images into per-pixel maps.

    Subclasses set the class attribute ``spec``. The constructor must stay cheap (no weight
    loading) because listing experts instantiates them; heavy work belongs in :meth:`load`,
    which the core calls once before the first :meth:`predict`.
    Settings (a weights path, a model id, a backend) arrive as keyword arguments, laid over
    ``PRISMER_<NAME>_<KEY>`` environment variables, for every expert alike.
    """

    spec: ClassVar[ExpertSpec]

    def __init__(self, **settings: Any) -> None:
        self.settings: dict[str, Any] = merged_settings(self.spec.name, settings)

    def readiness(self) -> Readiness:
        """Say whether :meth:`predict` can run here (dependencies importable, weights present)."""
        return Readiness.ok()

    def load(self, device: str = "cpu") -> None:
        """Load weights onto ``device``. Called once, before the first prediction."""

    @abstractmethod
    def predict(
        self,
        images: Sequence[np.ndarray],
        context: Mapping[str, Sequence[ExpertOutput]] | None = None,
    ) -> list[ExpertOutput]:
        """Label a batch of RGB uint8 images (each H×W×3); return one output per image.

        ``context`` holds the outputs of the experts named in ``spec.depends_on``, in the
        same order as ``images``.
        """


class ConfigurableExpert(Expert):
    """An expert with typed, checked settings: the base of the built-in experts, and of any
    plugin whose expert has options (``prismer experts new`` writes one).

    ``Options`` is an :class:`~prismer_core.experts.settings.ExpertOptions` model whose fields
    are the settings, filled from explicit settings over ``PRISMER_<NAME>_<KEY>`` variables.
    Implement :meth:`check` (is it ready, given valid options) instead of :meth:`readiness`, so
    a bad setting is always reported the same way: before any work, with the closest key.
    """

    Options: ClassVar[type[ExpertOptions]] = ExpertOptions

    @cached_property
    def options(self) -> Any:
        """The parsed options; raises SettingError when a setting is unknown or invalid."""
        return parse_options(self.Options, self.settings, self.spec.name)

    def readiness(self) -> Readiness:
        try:
            options = self.options
        except SettingError as exc:
            return Readiness.missing(str(exc), f"see 'prismer experts info {self.spec.name}' and docs/experts.md")
        return self.check(options)

    def check(self, options: Any) -> Readiness:
        """Whether the expert can run with these (valid) options."""
        return Readiness.ok()
