"""The demo's evaluation table: each trained run, captions and VQA on the demo's test split.

``prismer demo`` (:mod:`prismer_core.demo.run`) calls :func:`evaluate_demo` after training::

    from prismer_core.demo import evaluate_demo
    evaluate_demo({name: result.checkpoint for name, result in report.runs.items()},
                  data / "test.jsonl", out / "eval", labels=labels, console=console)

Every number of the table it prints comes from a report written by the same
:func:`~prismer_core.inference.evaluation.evaluate` that ``prismer eval`` runs, and the
commands that reproduce each report are printed beneath it. When the questions have a
``type`` (the demo's do: count, colour, shape, position, word), a second table gives the VQA
accuracy per type, which shows where the experts help and where they do not. Runs trained with
the contrastive pass are also scored on retrieval (recall@1/5 text → image and image → text,
against chance), and on the text → image recall of the captions that name a printed word,
where only what the OCR expert reads tells the scenes apart.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from ..inference.evaluation import HEADLINE, EvalReport, accuracy_by_type, evaluate, metrics_table
from ..inference.predictor import Predictor
from ..inference.retrieval import TEXT_TO_IMAGE, chance_recall, recall_metrics, recall_name
from .scenes import WORD_PHRASE

DEMO_TASKS = ("vqa", "caption")
#: The retrieval table's columns: the headline recalls, then those of the captions naming a word.
WORD_RECALLS = tuple(f"{recall_name(TEXT_TO_IMAGE, k)} (word)" for k in (1, 5))
RETRIEVAL_COLUMNS = (*HEADLINE["retrieval"], *WORD_RECALLS)


def evaluate_demo(
    runs: Mapping[str, str | Path],
    test_data: str | Path,
    out: str | Path,
    *,
    labels: str | Path | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    precision: str = "fp32",
) -> dict[str, dict[str, float]]:
    """Evaluate each run (``{"edge+ocr": run folder or checkpoint, "PrismerZ": ...}``) on
    ``test_data`` with the CLI's defaults: open-ended VQA, 3-beam captions.

    Writes ``OUT/<run>-<task>.json`` per run and task, prints the table (VQA accuracy, CIDEr,
    BLEU-4), the VQA accuracy per question type when the rows have types, and the `prismer
    eval` commands that give the same numbers; returns the table (with the per-type values).
    ``labels``: a label store holding the test images' expert maps (default: run the experts).
    ``precision``: the Predictor's (``bf16`` scores a run as `prismer eval --precision bf16` does).
    """
    console = console or Console()
    out = Path(out)
    table: dict[str, dict[str, float]] = {}
    predictions: dict[str, dict[str, list[dict]]] = {}
    retrieval: dict[str, dict[str, float]] = {}
    commands = []
    for name, run in runs.items():
        predictor = Predictor.from_checkpoint(run, labels=labels, precision=precision)
        row: dict[str, float] = {}
        tasks = (*DEMO_TASKS, "retrieval") if predictor.model.spec.contrastive.enabled else DEMO_TASKS
        for task in tasks:
            report_path = out / f"{_slug(name)}-{task}.json"
            report = evaluate(predictor, test_data, task, console=console, show_progress=show_progress)
            report.write(report_path)
            predictions.setdefault(name, {})[task] = report.predictions
            if task == "retrieval":
                retrieval[name] = {**report.metrics, **word_recalls(report)}
                retrieval.setdefault("chance", chance_row(report))
            # VQA keeps every metric (the accuracy per type too); captions their headline ones
            elif task == "vqa":
                row.update(report.metrics)
            else:
                row.update({m: report.metrics[m] for m in HEADLINE[task]})
            flags = ["--labels", str(labels)] if labels else []
            if precision != "fp32":
                flags += ["--precision", precision]
            commands.append(shlex.join(["prismer", "eval", "--checkpoint", str(run), "--data", str(test_data),
                                        "--task", task, *flags, "--report", str(report_path)]))
        table[name] = row
    columns = [metric for task in DEMO_TASKS for metric in HEADLINE[task]]
    console.print(f"evaluation on {test_data} (open-ended VQA, captions by 3-beam search):")
    console.print(metrics_table(table, columns))
    by_type = {name: accuracy_by_type(row) for name, row in table.items()}
    kinds = sorted({kind for accuracies in by_type.values() for kind in accuracies})
    if kinds:
        console.print("VQA accuracy by question type:")
        console.print(metrics_table(by_type, kinds))
    if retrieval:
        console.print("retrieval on the test split by the contrastive pass (recall@K: the right image or caption "
                      f"among the K most similar; (word): the captions that name a printed word):")
        console.print(metrics_table(retrieval, RETRIEVAL_COLUMNS))
        for name, values in retrieval.items():
            if name != "chance":
                table[name].update({f"retrieval {metric}": value for metric, value in values.items()})
    print_samples(predictions, console)
    console.print(f"reports in {out}; each row again from the command line:")
    for command in commands:
        console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)
    return table


def print_samples(predictions: Mapping[str, Mapping[str, list[dict]]], console: Console, images: int = 2) -> None:
    """What each run wrote for the first ``images`` test images (its caption, its answer to the
    image's first question), side by side, so a person reads the language and not only scores."""
    first = next(iter(predictions.values()), {})
    names = list(dict.fromkeys(p["image"] for p in first.get("caption", [])))[:images]
    for image in names:
        console.print(f"[bold]{image}[/bold]")
        for run, tasks in predictions.items():
            caption = next((p["prediction"] for p in tasks.get("caption", []) if p["image"] == image), None)
            answer = next((p for p in tasks.get("vqa", []) if p["image"] == image), None)
            console.print(f"  {run}: caption: {caption!r}", markup=False, highlight=False, soft_wrap=True)
            if answer is not None:
                console.print(f"  {run}: {answer['question']} -> {answer['prediction']!r} (expected {answer['answers'][0]!r})",
                              markup=False, highlight=False, soft_wrap=True)


def word_recalls(report: EvalReport) -> dict[str, float]:
    """Text → image recall@1/5 of the captions that name a printed word (the demo's captions
    say "... with the word cat ..."), from the report's ranks."""
    worded = [p for p in report.predictions if p["direction"] == TEXT_TO_IMAGE and WORD_PHRASE in f" {p['caption']} "]
    metrics = recall_metrics(worded)
    return {f"{recall_name(TEXT_TO_IMAGE, k)} (word)": metrics[recall_name(TEXT_TO_IMAGE, k)] for k in (1, 5)} if worded else {}


def chance_row(report: EvalReport) -> dict[str, float]:
    """What random rankings would score on this report's queries."""
    chance = {**chance_recall(report.predictions, 1), **chance_recall(report.predictions, 5)}
    return {**chance, **{f"{recall_name(TEXT_TO_IMAGE, k)} (word)": chance[recall_name(TEXT_TO_IMAGE, k)] for k in (1, 5)}}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
