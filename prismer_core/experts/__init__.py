"""The expert contract, its settings, output validation and the runner that applies experts."""

from .contract import (
    CONTRACT_VERSION,
    ConfigurableExpert,
    DenseMap,
    Expert,
    ExpertKind,
    ExpertOutput,
    ExpertSpec,
    Readiness,
    SemanticMap,
    SpecError,
    normalize_label,
)
from .settings import ExpertOptions, SettingError
from .validate import ExpertLoadError, ExpertOutputError, check_output, validate_outputs

__all__ = [
    "CONTRACT_VERSION",
    "ConfigurableExpert",
    "DenseMap",
    "Expert",
    "ExpertKind",
    "ExpertLoadError",
    "ExpertOptions",
    "ExpertOutput",
    "ExpertOutputError",
    "ExpertSpec",
    "Readiness",
    "SemanticMap",
    "SettingError",
    "SpecError",
    "check_output",
    "normalize_label",
    "validate_outputs",
]
