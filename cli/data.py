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
    shapes: str = typer.Option(None, "--shapes", help="Comma-separated shapes to draw from [default: circle,square,triangle,star; also pentagon, hexagon, diamond, cross]."),
    colours: str = typer.Option(None, "--colours", help="Comma-separated colours [default: red,green,blue,yellow,purple,orange; also pink, cyan, brown, grey, black, white, teal, lime]."),
    words: str = typer.Option(None, "--words", help="Comma-separated words printed on shapes [default: 16 short words and numbers]."),
    word_shapes: str = typer.Option(None, "--word-shapes", help="Shapes that carry a word [default: circle,square]."),
    background: str = typer.Option("gradient", "--background", help="gradient, dark, stripes or checker."),
    radius: str = typer.Option(None, "--radius", metavar="MIN,MAX", help="Radius of plain shapes as a share of the side [default: 0.10,0.16]."),
    word_radius: str = typer.Option(None, "--word-radius", metavar="MIN,MAX", help="Radius of shapes with a word [default: 0.14,0.17]."),
    max_shapes: int = typer.Option(4, "--max-shapes", min=1, help="Most shapes in one scene (one of each kind and colour, one per cell)."),
) -> None:
    """Generate the demo scenes: coloured shapes with printed words, captions and questions.

    Each manifest line is a caption row ({"image", "caption"}) or a question row
    ({"image", "question", "answer", "type"}); train with --task caption,vqa. Positions are
    named in the text, so keep --hflip at 0 (or let the trainer swap left/right). The scene
    options make a differently drawn set, recorded in demo.json.
    """
    from rich.console import Console

    from prismer_core.demo import generate_demo, split_sizes
    from prismer_core.demo.scenes import scene_options
    from prismer_core.progress import make_progress

    options = scene_options(shapes=shapes, colours=colours, words=words, word_shapes=word_shapes, background=background,
                            radius=radius, word_radius=word_radius, max_shapes=max_shapes)
    sizes = split_sizes(n)
    with make_progress(Console(stderr=True), transient=True) as progress:
        task = progress.add_task("drawing scenes", total=n)
        summary = generate_demo(out, n=n, seed=seed, size=size, progress=lambda k: progress.advance(task, k), options=options)
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
