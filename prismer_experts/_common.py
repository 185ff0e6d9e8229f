"""Helpers shared by the built-in experts, so no expert copies another."""

from __future__ import annotations

import dataclasses
import importlib.util
from functools import cached_property
from typing import Any, ClassVar

from prismer_core.experts.contract import Expert, Readiness
from prismer_core.experts.settings import SettingError, parse_options


def require_modules(*modules: str, extra: str | None = None, package: str | None = None) -> Readiness:
    """'not ready' naming the first missing module and the pip command that brings it."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            what = f"prismer[{extra}]" if extra else (package or module)
            return Readiness.missing(f"Python module '{module}' is not installed", f"pip install '{what}'")
    return Readiness.ok()


@dataclasses.dataclass
class NoOptions:
    """An expert without settings."""


class BuiltinExpert(Expert):
    """Base of the built-in experts: typed, checked settings with environment defaults.

    ``Options`` is a dataclass; its fields are the expert's settings, filled from explicit
    settings over ``PRISMER_<NAME>_<KEY>`` variables (see prismer_core.experts.settings).
    Subclasses implement :meth:`check` (is it ready, given valid options) instead of
    :meth:`readiness`, so a bad setting is always reported the same way.
    """

    Options: ClassVar[type] = NoOptions

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
