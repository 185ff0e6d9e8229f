"""Expert settings: explicit values, `--set NAME.KEY=VALUE`, and ``PRISMER_<NAME>_<KEY>`` variables.

An expert receives its settings as keyword arguments (:attr:`Expert.settings`). Values can
come from three places; explicit ones (the Python API, ``--set``) win over the environment,
so a command line can override what a shell exported::

    PRISMER_DEPTH_MODEL=/weights/dpt prismer label ... --set depth.model=/other/dpt

Values from the command line and the environment are strings. An expert that declares its
options as a dataclass gets them typed and checked by :func:`parse_options`, which names the
expert, the key and the accepted values when something is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from ..errors import PrismerError

ENV_PREFIX = "PRISMER_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

OptionsT = TypeVar("OptionsT")


class SettingError(PrismerError):
    """A setting that names no known option, or whose value cannot be used."""


def env_var(expert: str, key: str) -> str:
    """The environment variable that sets ``key`` of ``expert``: ``PRISMER_DEPTH_MODEL``."""
    return f"{ENV_PREFIX}{expert.upper()}_{key.upper()}"


def settings_from_env(expert: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every ``PRISMER_<EXPERT>_<KEY>`` variable as ``{key: value}`` (keys lower-cased)."""
    environ = os.environ if environ is None else environ
    prefix = f"{ENV_PREFIX}{expert.upper()}_"
    return {
        name[len(prefix):].lower(): value
        for name, value in environ.items()
        if name.startswith(prefix) and len(name) > len(prefix)
    }


def merged_settings(
    expert: str, explicit: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The environment's settings for ``expert`` with ``explicit`` ones laid over them."""
    return {**settings_from_env(expert, environ), **dict(explicit or {})}


def settings_record(settings: Mapping[str, Any]) -> dict[str, str]:
    """Settings as label stores and run records keep them: sorted keys, values as strings
    (the command line and the environment give strings, the Python API may not)."""
    return {str(key): str(value) for key, value in sorted(settings.items())}


def describe_settings(record: Mapping[str, str]) -> str:
    """``backend=rapidocr, min_score=0.8``, or ``default settings`` when there are none."""
    return ", ".join(f"{key}={value}" for key, value in record.items()) or "default settings"


def parse_assignments(
    values: Iterable[str], known_experts: Iterable[str] | None = None
) -> dict[str, dict[str, str]]:
    """Turn ``["depth.model=/w/dpt", "seg.backend=sam"]`` into ``{expert: {key: value}}``.

    With ``known_experts``, an assignment to any other expert is an error that suggests the
    closest name (a typo would otherwise be ignored silently).
    """
    known = list(known_experts) if known_experts is not None else None
    result: dict[str, dict[str, str]] = {}
    for text in values:
        target, sep, value = text.partition("=")
        expert, dot, key = target.strip().partition(".")
        if not sep or not dot or not expert or not key:
            raise SettingError(f"--set {text!r}: write NAME.KEY=VALUE, for example --set depth.model=/weights/dpt")
        if known is not None and expert not in known:
            close = difflib.get_close_matches(expert, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise SettingError(
                f"--set {text!r}: '{expert}' is not one of the experts being run ({', '.join(known)}){hint}"
            )
        result.setdefault(expert, {})[key.strip().lower()] = value.strip()
    return result


def parse_options(options_type: type[OptionsT], settings: Mapping[str, Any], expert: str) -> OptionsT:
    """Build the ``options_type`` dataclass from ``settings``, converting strings to field types.

    Supported field types: ``str``, ``int``, ``float``, ``bool`` and their ``| None`` forms
    (the strings ``""`` and ``"none"`` mean None). Unknown keys and bad values raise
    :class:`SettingError` naming the expert, the key and where it could have come from.
    """
    fields = {f.name: f for f in dataclasses.fields(options_type)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(options_type)
    values: dict[str, Any] = {}
    for key, raw in settings.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            known = ", ".join(fields) or "none"
            raise SettingError(
                f"expert '{expert}' has no setting '{key}' (from --set {expert}.{key}=… or "
                f"{env_var(expert, key)}){hint}; its settings: {known}"
            )
        values[key] = _convert(raw, hints[key], expert, key)
    options = options_type(**values)
    check = getattr(options, "check", None)
    if callable(check):
        problem = check()
        if problem:
            raise SettingError(f"expert '{expert}': {problem}")
    return options


def _convert(raw: Any, hint: Any, expert: str, key: str) -> Any:
    allowed = [a for a in typing.get_args(hint)] if _is_union(hint) else [hint]
    optional = type(None) in allowed
    base = next((a for a in allowed if a is not type(None)), str)
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none")):
        if optional:
            return None
        if raw is None or base is not str:
            raise SettingError(f"expert '{expert}': setting '{key}' needs a value")
    if not isinstance(raw, str):
        if base is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, base):
            return raw
        raise SettingError(f"expert '{expert}': setting '{key}' must be {base.__name__}, got {raw!r}")
    text = raw.strip()
    try:
        if base is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        return base(text)
    except ValueError:
        expected = "true or false" if base is bool else ("an integer" if base is int else "a number")
        raise SettingError(f"expert '{expert}': setting '{key}' must be {expected}, got {raw!r}") from None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)
