"""A new expert package from a template: what `prismer experts new NAME` writes.

The template is a folder of files ending in ``.tmpl``; ``$expert``, ``$expert_upper``, ``$distribution``,
``$module``, ``$class_name``, ``$prismer_version`` and ``$contract_version`` in their text are
filled in (``string.Template``), and a ``__module__`` folder is renamed to the module name.
The package appears complete or not at all: it is written to a temporary folder beside the
target, then renamed.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

from .atomic import staged_directory
from .errors import PrismerError
from .experts.contract import CONTRACT_VERSION, NAME_PATTERN

TEMPLATE_SUFFIX = ".tmpl"
MODULE_PLACEHOLDER = "__module__"


class ScaffoldError(PrismerError):
    """The package cannot be created: bad name, target exists, or a broken template."""


@dataclass(frozen=True)
class PluginNames:
    """Every name a new expert package needs, derived from the expert name."""

    expert: str  # my_depth: what `prismer label --experts` takes
    expert_upper: str  # MY_DEPTH: its environment variables, PRISMER_MY_DEPTH_KEY
    distribution: str  # prismer-my-depth: what pip installs
    module: str  # prismer_my_depth: what Python imports
    class_name: str  # MyDepthExpert
    prismer_version: str
    contract_version: int

    @classmethod
    def for_expert(cls, expert: str) -> "PluginNames":
        if not NAME_PATTERN.match(expert):
            raise ScaffoldError(
                f"expert name {expert!r} must be lower-case letters, digits or '_', "
                "starting with a letter, at most 32 characters (for example: my_depth)"
            )
        from . import __version__

        return cls(
            expert=expert,
            expert_upper=expert.upper(),
            distribution="prismer-" + expert.replace("_", "-"),
            module="prismer_" + expert,
            class_name="".join(part.title() for part in expert.split("_") if part) + "Expert",
            prismer_version=__version__,
            contract_version=CONTRACT_VERSION,
        )


def scaffold_plugin(expert: str, out_dir: str | os.PathLike[str], template_dir: str | os.PathLike[str]) -> Path:
    """Write the package for ``expert`` to ``out_dir/prismer-<expert>``; return that folder."""
    names = PluginNames.for_expert(expert)
    template_dir = Path(template_dir)
    if not template_dir.is_dir():
        raise ScaffoldError(f"template folder not found: {template_dir}")
    out_dir = Path(out_dir)
    target = out_dir / names.distribution
    if target.exists():
        raise ScaffoldError(f"{target} already exists: choose another name or --out folder")
    with staged_directory(target) as staging:
        _render_tree(template_dir, staging, names)
    return target


def _render_tree(template_dir: Path, dest: Path, names: PluginNames) -> None:
    values = {key: str(value) for key, value in asdict(names).items()}
    templates = sorted(p for p in template_dir.rglob(f"*{TEMPLATE_SUFFIX}") if p.is_file())
    if not templates:
        raise ScaffoldError(f"template folder {template_dir} holds no *{TEMPLATE_SUFFIX} files")
    for source in templates:
        relative = source.relative_to(template_dir).with_suffix("")  # drops .tmpl
        parts = [names.module if part == MODULE_PLACEHOLDER else part for part in relative.parts]
        try:
            text = Template(source.read_text(encoding="utf-8")).substitute(values)
        except (KeyError, ValueError) as exc:
            raise ScaffoldError(f"template {source} uses an unknown or malformed placeholder: {exc}") from None
        path = dest.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
