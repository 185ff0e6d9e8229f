"""The expert contract, output validation and the runner that applies experts to images."""

from .contract import (
    CONTRACT_VERSION,
    DenseMap,
    Expert,
    ExpertKind,
    ExpertOutput,
    ExpertSpec,
    Readiness,
    SemanticMap,
    SpecError,
)
from .validate import ExpertOutputError, check_output, validate_outputs

__all__ = [
    "CONTRACT_VERSION",
    "DenseMap",
    "Expert",
    "ExpertKind",
    "ExpertOutput",
    "ExpertOutputError",
    "ExpertSpec",
    "Readiness",
    "SemanticMap",
    "SpecError",
    "check_output",
    "validate_outputs",
]
