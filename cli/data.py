"""`prismer data …`: make the built-in demo data, and check manifests before training on them."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import IMAGE_ROOT, new_app

app = new_app("Training data: generate the offline demo set, check manifests.")


@app.command("demo")
def demo(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write images/ and train/val/test.jsonl into."),
    n: int = typer.Option(500, "--n", min=3, help="Number of images (split 80/10/10 into train/val/test)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same files: every image is drawn from (seed, index)."),
    size: int = typer.Option(192, "--size", min=64, help="Image side in pixels."),
) -> None:
    """Generate the demo scenes: coloured shapes with printed words, captions and questions.

    Each manifest line is a caption row ({"image", "caption"}) or a question row
    ({"image", "question", "answer", "type"}); train with --task caption,vqa. Positions are
    named in the text, so keep --hflip at 0 (or let the trainer swap left/right).
    """
    from rich.console import Console

    from prismer_core.demo import generate_demo, split_sizes
    from prismer_core.progress import make_progress

    sizes = split_sizes(n)
    with make_progress(Console(stderr=True), transient=True) as progress:
        task = progress.add_task("drawing scenes", total=n)
        summary = generate_demo(out, n=n, seed=seed, size=size, progress=lambda k: progress.advance(task, k))
    for split, count in sizes.items():
        typer.echo(f"{split}: {count} images, {summary.rows[split]} rows -> {summary.manifest(split)}")


@app.command("check")
def check(
    manifests: list[Path] = typer.Argument(..., metavar="MANIFEST...", help="JSONL, COCO captions / VQAv2 questions / BLIP-style .json, .tar shards or folders of them."),
    task: str = typer.Option("caption", "--task", help="caption, vqa, or caption,vqa: which rows count as usable."),
    decode: bool = typer.Option(True, "--decode/--no-decode", help="Also decode every image (slower, finds corrupt files)."),
    image_root: Path = IMAGE_ROOT,
) -> None:
    """Report every bad row (file:line and why) without training; exit 1 if there is any."""
    from prismer_core.data.manifest import check_data, parse_tasks

    data, problems = check_data(manifests, parse_tasks(task), decode, image_root)
    counts = ", ".join(f"{data.count(t)} {t}" for t in ("caption", "vqa") if data.count(t))
    typer.echo(f"{counts} usable samples; {len(problems)} bad rows")
    for line in problems:
        typer.echo(line, err=True)
    if problems:
        raise typer.Exit(1)
