"""Prismer core: the expert contract, the plugin registry, semantic maps, the model and its data.

The core knows no concrete expert: experts arrive through the ``prismer`` entry-point group.
"""

from .experts import (
    CONTRACT_VERSION,
    DenseMap,
    Expert,
    ExpertKind,
    ExpertOutput,
    ExpertOutputError,
    ExpertSpec,
    Readiness,
    SemanticMap,
)
from .hookspecs import hookimpl
from .errors import PrismerError
from .registry import get_registry, load_registry

__version__ = "0.1.0"

__all__ = [
    "CONTRACT_VERSION",
    "DenseMap",
    "Expert",
    "ExpertKind",
    "ExpertOutput",
    "ExpertOutputError",
    "ExpertSpec",
    "PrismerError",
    "Readiness",
    "SemanticMap",
    "get_registry",
    "hookimpl",
    "load_registry",
]
