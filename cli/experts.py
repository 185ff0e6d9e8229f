"""`prismer experts …`: what the installed plugins provide and whether it can run here."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from prismer_core.registry import get_registry

from .app import new_app, print_rows

app = new_app("List and inspect the installed experts (built-in and third-party plugins).")


@app.command("list")
def list_experts(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list for scripts."),
) -> None:
    """Show every expert: kind, channels fed to the model, package, version and status.

    Semantic experts feed 64 channels (label embeddings); a broken plugin appears in
    brackets with the reason it failed.
    """
    def cells(row: dict) -> list:
        status = row["status"]
        style = "green" if row["ready"] else ("red" if status.startswith(("broken", "conflict", "incompatible")) else "yellow")
        return [Text(row["name"]), row["kind"], "" if row["channels"] is None else str(row["channels"]),
                Text(f"{row['package']} {row['package_version']}".strip()), Text(row["version"]), Text(status, style=style)]

    print_rows(get_registry().status_rows(), as_json, "Prismer experts",
               ("name", "kind", "channels", "package", "version", "status"), cells)


@app.command("info")
def info(name: str = typer.Argument(..., help="Expert name, as shown by 'prismer experts list'.")) -> None:
    """Show everything an expert declares, where it comes from, and whether it is ready."""
    registry = get_registry()
    entry = registry.entry(name)
    details = {"name": name, "plugin": entry.plugin.name, "package": entry.plugin.package}
    if entry.spec is not None:
        details.update(entry.spec.to_dict())
        if entry.spec.vocabulary:
            shown = list(entry.spec.vocabulary[:20])
            details["vocabulary"] = shown + ([f"… {len(entry.spec.vocabulary) - 20} more"] if len(entry.spec.vocabulary) > 20 else [])
    if entry.status != "ok":
        details["status"] = entry.status_text()
    else:
        readiness = registry.readiness(name)
        details["status"] = "ready" if readiness.ready else f"not ready: {readiness}"
    width = max(len(k) for k in details)
    for key, value in details.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        typer.echo(f"{key:<{width}}  {value}")


@app.command("new")
def new(
    name: str = typer.Argument(..., help="Name of the new expert: lower-case letters, digits and '_', e.g. my_depth."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder to create the package in (default: the current one)."),
) -> None:
    """Create a new expert package, prismer-NAME, ready to install, test and publish.

    It holds a pyproject.toml with the 'prismer' entry point, the expert module (a working brightness map to replace with your model), a test, and a README.

    It passes its own tests as written: pip install -e prismer-NAME, then pytest in that folder. The plugin guide is docs/plugins.md.
    """
    from importlib.resources import as_file, files

    from prismer_core.scaffold import scaffold_plugin

    with as_file(files("prismer_cli") / "templates" / "expert") as template:
        folder = scaffold_plugin(name, out, template)
    typer.echo(f"created {folder}")
    typer.echo(f"next: pip install -e {folder} && (cd {folder} && pytest) && prismer experts info {name}")


@app.command("check")
def check(
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint or run folder, or a Hugging Face Hub id owner/name\\[@revision]."),
    labels: Path = typer.Option(None, "--labels", help="Check against this label store (experts then need labels there, not to be ready to run)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list for scripts."),
) -> None:
    """Say which of a checkpoint's experts can run here, and for each one that cannot, why and the pip install line that provides it.

    Exits with 1 when some expert cannot run (the checkpoint then runs only with --missing-experts drop).
    """
    from prismer_core.checkpoint import read_checkpoint_info, resolve_checkpoint
    from prismer_core.inference.availability import checkpoint_experts

    info = read_checkpoint_info(resolve_checkpoint(checkpoint))
    found = checkpoint_experts(info, labels=labels)

    def cells(row: dict) -> list:
        style = "green" if row["usable"] else "red"
        return [Text(row["name"]), Text(row["version"]), Text(row["provided_by"] or "not recorded"),
                Text(row["state"], style=style), Text(row["reason"] or "-"), Text(row["install"] or "-")]

    print_rows([e.to_dict() for e in found], as_json, f"Experts of {info.directory}",
               ("expert", "trained version", "provided by", "here", "why", "install"), cells)
    missing = [e for e in found if not e.usable]
    if as_json:
        raise typer.Exit(1 if missing else 0)
    if not found:
        typer.echo("this checkpoint uses no experts (PrismerZ): it runs anywhere")
    elif not missing:
        typer.echo(f"all {len(found)} experts can run here")
    else:
        typer.echo(f"{len(found) - len(missing)} of {len(found)} experts can run here; missing: "
                   + ", ".join(e.name for e in missing), err=True)
        for line in dict.fromkeys(e.install for e in missing if e.install):
            typer.echo(f"  {line}", err=True)
        typer.echo("or run without them: --missing-experts drop", err=True)
        raise typer.Exit(1)
