"""The typer application object and its error handling, shared by every command module."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from prismer_core.errors import PrismerError


class PrismerGroup(TyperGroup):
    """Turns a PrismerError raised anywhere below into one 'Error: …' line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PrismerError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None


def new_app(help: str) -> typer.Typer:
    return typer.Typer(
        cls=PrismerGroup,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )


#: Where a manifest's images lie, for every command that reads manifests.
IMAGE_ROOT: Path = typer.Option(
    None, "--image-root",
    help="Folder the manifest's image paths are relative to [default: the manifest's folder] "
    "(COCO and VQAv2 files usually need it: their images lie elsewhere).",
)


_MODEL_DEFAULT = object()


def setting(model: type, field: str, *flags: str, default: Any = _MODEL_DEFAULT, **extra: Any) -> Any:
    """A typer option whose default and help come from a field of a settings model (pydantic),
    so the command line never restates them; ``default`` replaces the model's for options the
    CLI spells differently (a comma-separated list for a list field)."""
    info = model.model_fields[field]
    value = info.get_default(call_default_factory=True) if default is _MODEL_DEFAULT else default
    return typer.Option(value, *flags, help=(info.description or "").replace("[", "\\["), **extra)  # not rich markup


def print_rows(rows: list[dict], as_json: bool, title: str, columns: Sequence[str], cells: Callable[[dict], Sequence]) -> None:
    """Listing rows as JSON for scripts (``--json``), or as a table for people; ``cells`` turns a
    row into its table cells (rich Text where a value may hold brackets rich would parse)."""
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*cells(row))
    Console(width=max(120, Console().width)).print(table)
