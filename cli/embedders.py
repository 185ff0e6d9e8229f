"""`prismer embedders …`: the text embedders that turn semantic labels into 64-channel maps."""

from __future__ import annotations

import typer
from rich.text import Text

from .app import new_app, print_rows

app = new_app(
    "List the text embedders and fit their label projections.\n\n"
    "Semantic experts (segmentation, detection, OCR) output label names; each name is embedded "
    "by a text embedder and projected to 64 channels with a PCA fitted once per embedder."
)


@app.command("list")
def list_embedders(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list for scripts."),
) -> None:
    """Show every text embedder: status, identity, and whether its projection is fitted.

    The default (marked *) is $PRISMER_TEXT_EMBEDDER when set, else the ready embedder
    of highest priority: clip when its weights are on this machine, else minilm.
    """
    from prismer_core.semantic import describe_embedders, projection_path

    rows = describe_embedders()
    for row in rows:
        path = projection_path(row["identity"]) if row["identity"] else None
        row["projection"] = str(path) if path is not None and path.is_file() else None

    def cells(row: dict) -> list:
        return [("* " if row["default"] else "") + row["name"], row["package"], str(row["priority"]),
                Text(row["status"], style="green" if row["ready"] else "yellow"), row["identity"] or "",
                row["projection"] or ("not fitted yet" if row["ready"] else "")]

    print_rows(rows, as_json, "Prismer text embedders", ("name", "package", "priority", "status", "identity", "projection"), cells)


@app.command("fit")
def fit(
    name: str = typer.Argument(None, help="Embedder name (default: the one 'prismer embedders list' marks)."),
    assignments: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="An embedder setting, e.g. --set pretrained=/weights/clip.safetensors."
    ),
) -> None:
    """Fit (or find) the label projection of an embedder and print its identity and file.

    A projection is fitted once per embedder and then reused; fitting it ahead of a
    multi-process training run saves every process from waiting on it.
    """
    from prismer_core.experts.settings import parse_key_values
    from prismer_core.semantic import load_label_encoder, projection_path

    settings = {key.lower(): value for key, value in parse_key_values(assignments, "--set", "model=ViT-B-16").items()}
    encoder = load_label_encoder(name, **settings)
    typer.echo(f"{encoder.identity}\n{projection_path(encoder.embedder_identity)}")
