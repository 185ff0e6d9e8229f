"""The typer application object and its error handling, shared by every command module."""

from __future__ import annotations

from pathlib import Path

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
