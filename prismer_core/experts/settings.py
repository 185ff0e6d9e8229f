"""Expert settings: explicit values, `--set NAME.KEY=VALUE`, and ``PRISMER_<NAME>_<KEY>`` variables.

An expert receives its settings as keyword arguments (:attr:`Expert.settings`). Values can
come from three places; explicit ones (the Python API, ``--set``) win over the environment,
so a command line can override what a shell exported::

    PRISMER_DEPTH_MODEL=/weights/dpt prismer label ... --set depth.model=/other/dpt

Values from the command line and the environment are strings. An expert declares its options
as an :class:`ExpertOptions` model (pydantic); :func:`parse_options` types and checks them and
names the expert, the key (with the closest known one) and the accepted values when something
is wrong.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ..errors import PrismerError, did_you_mean

ENV_PREFIX = "PRISMER_"

OptionsT = TypeVar("OptionsT", bound="ExpertOptions")


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
            raise SettingError(
                f"--set {text!r}: '{expert}' is not one of the experts being run ({', '.join(known)})"
                f"{did_you_mean(expert, known)}"
            )
        result.setdefault(expert, {})[key.strip().lower()] = value.strip()
    return result


def parse_key_values(values: Iterable[str], flag: str, example: str) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` as a dict (keys stripped; values may hold '='), or an error that
    shows ``flag`` and an ``example`` of the form."""
    result: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"{flag} {text!r}: write KEY=VALUE, for example {flag} {example}")
        result[key.strip()] = value.strip()
    return result


def parse_yaml_values(values: Iterable[str], flag: str, example: str) -> dict[str, Any]:
    """As :func:`parse_key_values`, each value read as YAML (``128`` an int, ``[a, b]`` a list,
    ``null`` None), the way spec overrides (``--spec-set``) are given."""
    import yaml

    result: dict[str, Any] = {}
    for key, value in parse_key_values(values, flag, example).items():
        try:
            result[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SettingError(f"{flag} {key}={value}: not a YAML value ({str(exc).splitlines()[0]})") from None
    return result


class ExpertOptions(BaseModel):
    """The settings of an expert, as a pydantic model: each field is a setting (its type, its
    default, its comment in docs/experts.md). Unknown keys are refused; strings from the
    command line and the environment are converted to the field types (``none`` or an empty
    value means None for a field that may be None). Override :meth:`check` for rules that
    concern several fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _none_strings(cls, values: Any) -> Any:
        if not isinstance(values, Mapping):
            return values
        result = dict(values)
        for key, value in values.items():
            field = cls.model_fields.get(key)
            if field is not None and isinstance(value, str) and value.strip().lower() in ("", "none") and _allows_none(field.annotation):
                result[key] = None
        return result

    def check(self) -> str | None:
        """What is wrong with these values together, or None."""
        return None


#: How a setting's value is described when it does not convert, by pydantic error type.
_EXPECTED = {"int_parsing": "an integer", "int_from_float": "an integer", "float_parsing": "a number",
             "bool_parsing": "true or false", "string_type": "a string"}


def parse_options(options_type: type[OptionsT], settings: Mapping[str, Any], expert: str) -> OptionsT:
    """Build ``options_type`` from ``settings`` (strings or values), or raise
    :class:`SettingError` naming the expert, the key and where it could have come from."""
    try:
        options = options_type.model_validate(dict(settings))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else "?"
        known = list(options_type.model_fields)
        if error["type"] == "extra_forbidden":
            raise SettingError(
                f"expert '{expert}' has no setting '{key}' (from --set {expert}.{key}=… or "
                f"{env_var(expert, key)}){did_you_mean(key, known)}; its settings: {', '.join(known) or 'none'}"
            ) from None
        expected = _EXPECTED.get(error["type"])
        if expected:
            raise SettingError(f"expert '{expert}': setting '{key}' must be {expected}, got {error['input']!r}") from None
        raise SettingError(f"expert '{expert}': setting '{key}': {error['msg']}") from None
    problem = options.check()
    if problem:
        raise SettingError(f"expert '{expert}': {problem}")
    return options


def _allows_none(annotation: Any) -> bool:
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(annotation)
