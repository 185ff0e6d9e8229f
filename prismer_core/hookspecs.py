"""The pluggy hook specifications of Prismer: the whole surface a plugin can implement.

Every hook here is documented in docs/plugins.md; a test fails when one is not.
"""

from __future__ import annotations

from collections.abc import Callable


import pluggy

PROJECT = "prismer"
#: The entry-point group that plugins (the built-in experts included) declare.
ENTRY_POINT_GROUP = "prismer"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_experts(register: Callable[[type], None]) -> None:
    """Register expert classes: call ``register(ExpertSubclass)`` once for each.

    The class must subclass :class:`prismer_core.Expert` and set a ``spec``.
    """


@hookspec
def register_text_embedders(register: Callable[[type], None]) -> None:
    """Register text embedders that turn label strings into vectors for semantic maps.

    Call ``register(TextEmbedderSubclass)`` once for each; see
    :class:`prismer_core.semantic.TextEmbedder`.
    """


