"""`prismer retrieve`: find images by text, or texts by image, with a checkpoint's contrastive pass."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import IMAGE_ROOT
from .infer import BATCH, CHECKPOINT, DEVICE, LABELS, PRECISION, SETTINGS, _predictor


def retrieve(
    queries: list[str] = typer.Argument(None, metavar="[TEXT]...", help="Texts to find images for, e.g. \"a red circle with the word exit\" (with --images)."),
    checkpoint: Path = CHECKPOINT,
    images: Path = typer.Option(None, "--images", help="The images to search: a folder, or a manifest of any format `prismer eval` reads."),
    image: list[Path] = typer.Option(None, "--image", help="An image to find texts for (repeatable; with --texts)."),
    texts: Path = typer.Option(None, "--texts", help="With --image: the texts to rank (a text file, one per line, or a JSON list)."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many matches to show per query."),
    store: Path = typer.Option(None, "--store", help="Folder of stored image embeddings, keyed by the checkpoint and each image's content \\[default: $PRISMER_HOME/image-embeddings]."),
    no_store: bool = typer.Option(False, "--no-store", help="Embed every image afresh and store nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the matches as JSON, one object per query."),
    image_root: Path = IMAGE_ROOT,
    batch_size: int = BATCH,
    labels: Path = LABELS,
    device: str = DEVICE,
    precision: str = PRECISION,
    assignments: list[str] = SETTINGS,
) -> None:
    """Rank images for a text, or texts for an image, by the cosine similarity of their embeddings.

    Needs a checkpoint trained with the contrastive pass (`prismer train --spec-set contrastive.enabled=true`). The embeddings of the images are stored the first time (safetensors, keyed by the checkpoint and each image's bytes), so later queries on the same images only embed the text. Similarities are compared by an exact matrix product.
    """
    from prismer_core.data.manifest import read_images
    from prismer_core.errors import PrismerError
    from prismer_core.inference import read_candidates
    from prismer_core.progress import progress_bar

    by_text = images is not None
    if by_text == bool(image):
        raise PrismerError("give either TEXT... with --images (images for a text) or --image with --texts (texts for an image)")
    if by_text and not queries:
        raise PrismerError("--images needs at least one TEXT to search for")
    if not by_text and (texts is None or queries):
        raise PrismerError("--image needs --texts FILE, the texts to rank, and no TEXT arguments")
    gallery = read_images(images, image_root) if by_text else None
    candidates = read_candidates(texts, "texts") if not by_text else list(queries)
    predictor = _predictor(checkpoint, labels, device, assignments, precision)
    kept = None if no_store else predictor.embedding_store(store)
    refs = gallery if by_text else list(image)
    with progress_bar("embedding images", len(refs)) as advance:
        results = predictor.retrieve(candidates, refs, query="texts" if by_text else "images", k=top,
                                     batch_size=batch_size, progress=advance, store=kept)
    asked = candidates if by_text else [str(p) for p in image]
    if as_json:
        rows = [{"query": q, "matches": [{"rank": r, "name": m.name, "score": round(m.score, 4)} for r, m in enumerate(ms, 1)]}
                for q, ms in zip(asked, results)]
        typer.echo(json.dumps(rows, indent=2))
        return
    for query, matches in zip(asked, results):
        typer.echo(query)
        for rank, match in enumerate(matches, 1):
            typer.echo(f"  {rank:3d}  {match.score:7.4f}  {match.name}")
    if kept is not None:
        typer.echo(f"image embeddings: {kept.path} ({len(kept)} stored)", err=True)
