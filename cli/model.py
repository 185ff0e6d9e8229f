"""`prismer model …`: inspect model specs and count parameters without downloading anything."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from prismer_core.registry import get_registry, parse_expert_names
from prismer_core.specs import list_specs, load_spec

from .app import new_app

app = new_app("Inspect Prismer model specs: parts, parameter counts, what is trained.")

EXPERTS_HELP = (
    "Comma-separated experts, e.g. [bold]edge,ocr[/bold]. Installed experts are looked up by name; "
    "describe one that is not installed as NAME=dense:CHANNELS, NAME=semantic or "
    "NAME=semantic+instances (e.g. depth=dense:1,objdet=semantic+instances)."
)


@app.command("info")
def info(
    spec: str = typer.Option("tiny", "--spec", "-s", help="Bundled spec name (tiny, base, large, smol) or path to a spec .yaml."),
    experts: str = typer.Option("", "--experts", "-e", help=EXPERTS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Total and trainable parameters per part of the model a spec and expert set give.

    Built on PyTorch's meta device from the shapes in the spec: nothing is downloaded or
    allocated. No experts means PrismerZ (RGB only, no resampler).
    """
    from prismer_core.model import build_model  # imports torch: only when a model is built

    model_spec = load_spec(spec)
    expert_specs = get_registry().specs_or_described(parse_expert_names(experts))
    model = build_model(model_spec, expert_specs, device="meta")
    report = model.parameter_report()
    total = sum(c.total for c in report.values())
    trainable = sum(c.trainable for c in report.values())
    writes = getattr(model_spec.decoder, "output_vocabulary", "full")  # a causal LM writes its whole vocabulary
    if as_json:
        typer.echo(json.dumps({
            "spec": model_spec.name,
            "experts": list(expert_specs),
            "vision_tokens": model.num_vision_tokens,
            "output_vocabulary": writes,
            "parts": {part: {"total": c.total, "trainable": c.trainable} for part, c in report.items()},
            "total": total,
            "trainable": trainable,
        }, indent=2))
        return
    title = f"Prismer '{model_spec.name}' with {', '.join(expert_specs) or 'no experts (PrismerZ)'}"
    table = Table(title=title)
    for column in ("part", "parameters", "trainable", "frozen"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part, count in report.items():
        table.add_row(part, f"{count.total:,}", f"{count.trainable:,}", "yes" if not count.trainable else "")
    table.add_row("[bold]total[/bold]", f"[bold]{total:,}[/bold]", f"[bold]{trainable:,}[/bold]", "")
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print(
        f"trainable: {trainable / 1e6:.1f}M of {total / 1e6:.1f}M ({100 * trainable / total:.1f}%) "
        f"- experts' own weights not counted; vision tokens per image: {model.num_vision_tokens}"
    )
    if writes == "data":
        console.print("the decoder writes the tokens of its training targets (decoder.output_vocabulary: data, "
                      "filled in by `prismer train`)")
    elif isinstance(writes, list):
        console.print(f"the decoder writes {len(writes)} of its {model_spec.decoder.vocab_size} tokens (decoder.output_vocabulary)")


@app.command("specs")
def specs() -> None:
    """List the bundled model specs."""
    for name in list_specs():
        typer.echo(f"{name:<8} {load_spec(name).description}")
