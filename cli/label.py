"""`prismer label`: fill a label store with expert outputs."""

from __future__ import annotations

from pathlib import Path

import typer

from prismer_core.registry import parse_expert_names

from .app import IMAGE_ROOT


def label(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="A folder of images, one image, a manifest (JSONL, COCO captions / VQAv2 questions / BLIP-style .json), or webdataset .tar shards (a file or a folder of them)."),
    experts: str = typer.Option(..., "--experts", "-e", help="Comma-separated expert names, e.g. edge,ocr (see 'prismer experts list')."),
    out: Path = typer.Option(..., "--out", "-o", help="Label store folder; created if missing, resumed if present."),
    visualize: bool = typer.Option(False, "--visualize", help="Also write PNG previews under OUT/previews/."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per expert call."),
    shard: str = typer.Option(None, "--shard", help="Label only shard i of n (i/n); run n of these, on n processes or GPUs, into the same --out."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="Skip unreadable images (counted at the end) instead of stopping."),
    device: str = typer.Option("cpu", "--device", help="Where experts run: cpu, cuda, cuda:1 ... (an expert that runs on the CPU only stays there, and says so)."),
    workers: int = typer.Option(None, "--workers", "-j", min=1, help="Labelling processes, each with its own experts and a share of the CPU threads [default: one per CPU core, at most one per 32 images; 1 with --device cuda]."),
    image_root: Path = IMAGE_ROOT,
    assignments: list[str] = typer.Option(
        [], "--set", metavar="NAME.KEY=VALUE",
        help="An expert setting, e.g. --set depth.model=/weights/dpt (repeatable). "
        "PRISMER_<NAME>_<KEY> variables set defaults; see docs/experts.md for each expert's settings.",
    ),
) -> None:
    """Label images with experts into a resumable label store.

    Each output is written atomically as OUT/<expert>/<key>.npz, keyed by the image file's
    content (SHA-256), so training finds the labels however it names the file; OUT/images.jsonl
    says where each key was labelled from. Re-running the same command skips finished images,
    so an interrupted run is finished by running it again.
    """
    from prismer_core.experts.settings import parse_assignments
    from prismer_core.labeling import label_images
    from prismer_core.registry import get_registry

    names = parse_expert_names(experts)
    settings = parse_assignments(assignments, known_experts=get_registry().resolve(names)) if assignments else None
    report = label_images(
        input_path, names, out,
        batch_size=batch_size, visualize=visualize, shard=shard,
        skip_bad_images=skip_bad_images, device=device, settings=settings, image_root=image_root,
        workers=workers,
    )
    typer.echo(
        f"labelled {report.labelled} images ({report.images_per_second:.2f} images/s), "
        f"{report.skipped_done} already done, {report.files_written} files written to {out}"
    )
    if report.bad_images:
        typer.echo(f"skipped {len(report.bad_images)} unreadable images", err=True)
