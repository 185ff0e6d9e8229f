"""Prismer core: the expert contract, the plugin registry, semantic maps, the model and its data.

The core knows no concrete expert: experts arrive through the ``prismer`` entry-point group.
Plugins import what they need from here: the contract (``Expert``, ``ConfigurableExpert``,
``ExpertSpec``, ``DenseMap``, ``SemanticMap``, ``Readiness``, ``ExpertOptions``) and ``hookimpl``.
"""

from . import experts
from .errors import PrismerError
from .experts import *  # noqa: F403 - the expert contract is the package's public surface
from .hookspecs import hookimpl
from .registry import get_registry, load_registry

__version__ = "0.1.0"

__all__ = [*experts.__all__, "PrismerError", "get_registry", "hookimpl", "load_registry"]
