"""`prismer demo`: generate the demo data, label it, train with and without experts, evaluate."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Folder for data/, labels/ and runs/; a re-run resumes what is there."),
    n: int = typer.Option(None, "--n", min=3, help="Number of scenes [default: sized for 15 minutes on 2 CPU cores]."),
    steps: int = typer.Option(None, "--steps", min=1, help="Training steps of each run [default: as --n]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenes, data order and initialisation."),
    contrastive: bool = typer.Option(True, "--contrastive/--no-contrastive", help="Train the contrastive pass beside the generative one, so the runs also retrieve (and are scored on retrieval)."),
) -> None:
    """The main job, offline on CPU: demo scenes → edge+ocr labels → two trainings → evaluation.

    Trains the tiny spec with the edge and ocr experts and as PrismerZ (RGB only) on the
    same data and schedule, each with the generative and the contrastive pass (MaMMUT), then
    prints the results (VQA, captions, retrieval) and where the loss plots and checkpoints are.
    """
    from prismer_core.demo import DemoSettings, run_demo

    settings = DemoSettings(seed=seed, contrastive=contrastive)
    if n is not None:
        settings.n = n
    if steps is not None:
        settings.steps = steps
    run_demo(out, settings)
