"""Partial experts on the demo scenes (issue 16): what removing an expert at inference costs,
with and without expert dropout in training, and what `--init-from` saves when a trained model
takes in a new expert.

The experts are the demo's, edge and ocr (the one a model cannot do without on word questions),
and the new expert is saliency (the example plugin, plugins/prismer-saliency, which `make
install` installs); maps are read from a label store written once. The recipe is the demo's
(``prismer_core.demo.run.DemoSettings``: tiny spec, 64 px, lr 3e-4, batch
16), with fewer scenes and steps when asked (``--n``, ``--steps``). Runs, all with ``--seed``:

* ``scratch``: edge+ocr, no dropout, ``--steps`` steps (the demo's experts run);
* ``dropout``: edge+ocr, ``--dropout`` P, ``--steps`` steps;
* ``scratch3``: edge+ocr+saliency from scratch, ``--steps`` steps;
* ``extended``: ``--init-from scratch`` with edge+ocr+saliency for ``--steps / 2`` steps: a
  trained model that takes in a new expert, which issue 16 asks to reach ``scratch3`` in at
  most half its steps.

Each is evaluated on the test split (open-ended VQA, per question type) with every expert, and
``scratch`` and ``dropout`` also without each expert (``--missing-experts drop``, the expert
hidden with PRISMER_LOAD_PLUGINS as for a user without its plugin). Results go to
``OUT/seed-S/results.json`` and a table is printed.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_partial_experts.py --seed 0 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

EXPERTS = ("edge", "ocr")
NEW_EXPERT = "saliency"


def hiding(expert: str) -> str:
    """PRISMER_LOAD_PLUGINS that loads every installed ``prismer`` entry point but ``expert``."""
    from prismer_core.hookspecs import ENTRY_POINT_GROUP

    return ",".join(sorted(ep.name for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name != expert))


def evaluate_run(checkpoint: Path, test: Path, labels: Path, hide: str | None) -> dict:
    from prismer_core.inference import Predictor
    from prismer_core.inference.evaluation import evaluate
    from prismer_core.registry import LOAD_PLUGINS_ENV, get_registry

    previous = os.environ.pop(LOAD_PLUGINS_ENV, None)
    if hide is not None:
        os.environ[LOAD_PLUGINS_ENV] = hiding(hide)
    get_registry.cache_clear()
    try:
        predictor = Predictor.from_checkpoint(checkpoint, labels=labels, missing_experts="drop" if hide else "refuse")
        assert list(predictor.dropped_experts) == ([hide] if hide else []), predictor.dropped_experts
        report = evaluate(predictor, test, "vqa", show_progress=False)
    finally:
        os.environ.pop(LOAD_PLUGINS_ENV, None)
        if previous is not None:
            os.environ[LOAD_PLUGINS_ENV] = previous
        get_registry.cache_clear()
    return {"experts": report.experts["used"], **{k: round(v, 4) for k, v in report.metrics.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/partial_experts"))
    parser.add_argument("--n", type=int, default=640, help="demo scenes (the demo's 640 by default)")
    parser.add_argument("--steps", type=int, default=1000, help="steps of the from-scratch runs (the demo's 1000)")
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data order of every run (the scenes stay)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    args = parser.parse_args()

    from rich.console import Console

    from prismer_core.atomic import write_json_atomic
    from prismer_core.demo.run import DemoSettings
    from prismer_core.demo.scenes import generate_demo
    from prismer_core.labeling import label_images
    from prismer_core.train import train

    console = Console(stderr=True)
    data, labels = args.out / "data", args.out / "labels"
    out = args.out / f"seed-{args.seed}"
    settings = replace(DemoSettings(), n=args.n, steps=args.steps, eval_every=args.steps, threads=args.threads)
    started = time.perf_counter()
    summary = generate_demo(data, n=settings.n, seed=settings.seed, size=settings.scene_size)
    for split in summary.images:  # the store skips what is labelled: a second seed labels nothing
        label_images(summary.manifest(split), [*EXPERTS, NEW_EXPERT], labels, console=console)

    def run(name: str, experts, steps: int, **changes):
        config = settings.train_config(out / "runs" / name, data, labels, tuple(experts), seed=args.seed)
        config = config.model_copy(update={"max_steps": steps, **changes})
        seconds = time.perf_counter()
        result = train(config, console=console, show_progress=False)
        return result.checkpoint, time.perf_counter() - seconds

    three = (*EXPERTS, NEW_EXPERT)
    checkpoints, seconds = {}, {}
    checkpoints["scratch"], seconds["scratch"] = run("scratch", EXPERTS, args.steps)
    checkpoints["dropout"], seconds["dropout"] = run("dropout", EXPERTS, args.steps, expert_dropout=args.dropout)
    checkpoints["scratch3"], seconds["scratch3"] = run("scratch3", three, args.steps)
    checkpoints["extended"], seconds["extended"] = run("extended", three, args.steps // 2,
                                                       init_from=str(checkpoints["scratch"]), spec=None, spec_overrides={})

    test = data / "test.jsonl"
    results = {}
    for name in ("scratch", "dropout"):
        results[name] = {"all": evaluate_run(checkpoints[name], test, labels, None)}
        for expert in EXPERTS:
            results[name][f"without {expert}"] = evaluate_run(checkpoints[name], test, labels, expert)
    for name in ("scratch3", "extended"):
        results[name] = {"all": evaluate_run(checkpoints[name], test, labels, None)}

    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average": os.getloadavg(),
        "n": args.n, "steps": args.steps, "dropout": args.dropout, "seed": args.seed, "threads": args.threads,
        "train_seconds": seconds, "total_seconds": time.perf_counter() - started, "results": results,
    }
    write_json_atomic(out / "results.json", record)
    metrics = sorted({m for rows in results.values() for row in rows.values() for m in row if m != "experts"})
    print(f"| run | experts at inference | {' | '.join(metrics)} |")
    print("|---|---|" + "---|" * len(metrics))
    for name, rows in results.items():
        for label, row in rows.items():
            print(f"| {name} | {label} ({', '.join(row['experts'])}) | " + " | ".join(f"{row.get(m, float('nan')):.3f}" for m in metrics) + " |")
    print(json.dumps({k: v for k, v in record.items() if k != "results"}))


if __name__ == "__main__":
    main()
