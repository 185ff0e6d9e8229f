"""`prismer eval`: run a checkpoint over a manifest, score it, write a JSON report.

Tasks and their metrics (from :mod:`prismer_core.metrics`):

* ``caption``: CIDEr and BLEU-1..4 (pycocoevalcap's scorers); an image's references are all
  caption rows of that image.
* ``vqa``: VQA accuracy (answer normalisation; min(#matches/3, 1) with several reference
  answers), and per kind of question when rows have a ``type``. Open-ended generation, or
  ranking over a candidate list (``answers``).
* ``classify``: top-1 accuracy, ranking "A photo of a {class}." sentences by likelihood, or by
  embedding similarity (zero-shot, ``classify_by="similarity"``); rows are
  ``{"image": ..., "label": "cat"}``, the classes the distinct labels (or a ``classes`` list).
* ``retrieval``: recall@1/5/10 text → image and image → text over the caption rows and their
  distinct images, by the contrastive embeddings (:mod:`prismer_core.inference.retrieval`).

The report holds every prediction beside its references, and its metrics are computed from
exactly those predictions, so anyone can check them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..atomic import write_json_atomic
from ..checkpoint import add_figures
from ..model_card import Figure
from ..data.manifest import Sample, load_data, read_classification_rows
from ..errors import PrismerError
from ..metrics import caption_scores, mean_vqa_accuracy, top1_accuracy, vqa_accuracy
from ..progress import progress_bar
from .predictor import DEFAULT_TEMPLATE, Predictor
from .retrieval import IMAGE_TO_TEXT, TEXT_TO_IMAGE, chance_recall, rank_pairs, recall_metrics, recall_name

#: What `prismer eval` scores (training's tasks plus classification by ranking).
EVAL_TASKS = ("caption", "vqa", "classify", "retrieval")
#: The numbers the tables show first, per task.
HEADLINE = {
    "caption": ("CIDEr", "BLEU-4"), "vqa": ("VQA accuracy",), "classify": ("top-1 accuracy",),
    "retrieval": tuple(recall_name(d, k) for d in (TEXT_TO_IMAGE, IMAGE_TO_TEXT) for k in (1, 5)),
}


@dataclass
class EvalReport:
    task: str
    checkpoint: str
    data: str
    metrics: dict[str, float]
    predictions: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    #: the experts that ran ("used") and those of the checkpoint that did not, with why ("dropped")
    experts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"count": len(self.predictions), **asdict(self)}

    @property
    def summary(self) -> str:
        unit = {"vqa": "questions", "retrieval": "queries"}.get(self.task, "images")
        without = f" without {', '.join(self.experts['dropped'])}" if self.experts.get("dropped") else ""
        return f"{self.task}: {len(self.predictions)} {unit} of {self.data}, checkpoint {self.checkpoint}{without}"

    def write(self, path: str | Path) -> Path:
        write_json_atomic(path, self.to_dict())
        return Path(path)

    def figures(self) -> list[Figure]:
        """The metrics as model-card figures; those of a run without some experts say which ran."""
        ran = tuple(self.experts.get("used", ())) if self.experts.get("dropped") else None
        return [Figure(self.task, Path(self.data).name, metric, value, ran) for metric, value in self.metrics.items()]

    def update_card(self) -> Path:
        """Write the figures into the evaluated checkpoint's model card; returns the card's path."""
        return add_figures(self.checkpoint, self.figures())


def evaluate(
    predictor: Predictor,
    data: str | Path,
    task: str,
    *,
    answers: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    template: str = DEFAULT_TEMPLATE,
    classify_by: str = "likelihood",
    prefilter_k: int | None = None,
    num_beams: int = 3,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    image_root: str | Path | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> EvalReport:
    """Evaluate ``predictor`` on ``data`` (any format :mod:`prismer_core.data.manifest` reads)
    for ``task`` (see the module docstring).

    ``answers``: candidate answers for VQA by ranking (None: open-ended). ``classify_by``:
    ``likelihood`` or ``similarity`` (see :meth:`Predictor.classify`). ``limit``: only the
    first N images (caption, classify, retrieval) or questions (vqa). ``image_root``: where
    the images of ``data`` lie (default: beside it).
    """
    if task not in EVAL_TASKS:
        raise PrismerError(f"--task must be one of {', '.join(EVAL_TASKS)}, got {task!r}")
    if limit is not None and limit < 1:
        raise PrismerError("--limit must be at least 1")
    settings: dict[str, Any] = {"batch_size": batch_size, "precision": str(predictor.dtype).removeprefix("torch.")}
    run = _Run(predictor, settings, batch_size, {"console": console, "enabled": show_progress})
    if task == "caption":
        predictions = _captions(run, data, limit, num_beams, max_new_tokens or 20, image_root)
    elif task == "vqa":
        predictions = _answers(run, data, limit, answers, prefilter_k, num_beams, max_new_tokens or 10, image_root)
    elif task == "classify":
        predictions = _classes(run, data, limit, classes, template, classify_by, image_root)
    else:
        predictions = _retrieval(run, data, limit, image_root)
    experts = {"used": predictor.experts_used, "dropped": predictor.dropped_experts}
    return EvalReport(task, str(predictor.checkpoint), str(data), metrics_of(task, predictions), predictions, settings, experts)


@dataclass
class _Run:
    """What every task's evaluation needs: the predictor, the settings it records, the bar."""

    predictor: Predictor
    settings: dict[str, Any]
    batch_size: int
    bar: dict[str, Any]


def _captions(run: _Run, data: str | Path, limit: int | None, num_beams: int, max_new_tokens: int,
              image_root: str | Path | None) -> list[dict[str, Any]]:
    images, references = _caption_references(data, limit, image_root)
    run.settings.update(num_beams=num_beams, max_new_tokens=max_new_tokens, prompt=run.predictor.caption_prompt)
    with progress_bar("captioning", len(images), **run.bar) as advance:
        captions = run.predictor.caption(images, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                         batch_size=run.batch_size, progress=advance)
    return [{"image": s.name, "prediction": c, "references": references[s.name]} for s, c in zip(images, captions)]


def _answers(
    run: _Run, data: str | Path, limit: int | None, candidates: Sequence[str] | None, prefilter_k: int | None,
    num_beams: int, max_new_tokens: int, image_root: str | Path | None,
) -> list[dict[str, Any]]:
    samples = load_data(data, ("vqa",), image_root=image_root).samples[:limit]
    questions = [s.question for s in samples]
    with progress_bar("answering", len(samples), **run.bar) as advance:
        if candidates is None:
            run.settings.update(mode="open-ended", num_beams=num_beams, max_new_tokens=max_new_tokens)
            said = run.predictor.answer(samples, questions, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                        batch_size=run.batch_size, progress=advance)
        else:
            run.settings.update(mode="ranking", candidates=len(candidates), prefilter_k=prefilter_k)
            rankings = run.predictor.rank(samples, questions, candidates, prefilter_k=prefilter_k,
                                          batch_size=run.batch_size, progress=advance)
            said = [r.answer for r in rankings]
    return [
        {"image": s.name, "question": s.question, "prediction": a, "answers": list(s.answers),
         "accuracy": vqa_accuracy(a, s.answers), **({"type": s.question_type} if s.question_type else {})}
        for s, a in zip(samples, said)
    ]


def _classes(run: _Run, data: str | Path, limit: int | None, classes: Sequence[str] | None, template: str,
             by: str, image_root: str | Path | None) -> list[dict[str, Any]]:
    samples = read_classification_rows(data, image_root)[:limit]
    labels = [s.label for s in samples]
    names = list(classes) if classes is not None else sorted(set(labels))
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise PrismerError(f"{data}: labels not among the classes: {', '.join(unknown[:5])}")
    run.settings.update(template=template, classes=len(names), by=by)
    with progress_bar("classifying", len(samples), **run.bar) as advance:
        rankings = run.predictor.classify(samples, names, template, by=by, batch_size=run.batch_size, progress=advance)
    return [{"image": s.name, "prediction": r.answer, "label": label} for s, r, label in zip(samples, rankings, labels)]


def _retrieval(run: _Run, data: str | Path, limit: int | None, image_root: str | Path | None) -> list[dict[str, Any]]:
    images, references = _caption_references(data, limit, image_root)
    with progress_bar("embedding images", len(images), **run.bar) as advance:
        predictions = rank_pairs(run.predictor, images, [s.name for s in images], references,
                                 batch_size=run.batch_size, progress=advance)
    texts = sum(p["direction"] == TEXT_TO_IMAGE for p in predictions)
    run.settings.update(images=len(images), captions=texts,
                        chance={name: round(value, 4) for k in (1, 5, 10) for name, value in chance_recall(predictions, k).items()})
    return predictions


def metrics_of(task: str, predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The task's metrics from report predictions (what a reader of the report recomputes)."""
    if task == "caption":
        return caption_scores({p["image"]: p["prediction"] for p in predictions},
                              {p["image"]: p["references"] for p in predictions})
    if task == "retrieval":
        return recall_metrics(predictions)
    if task == "vqa":
        kinds = sorted({p["type"] for p in predictions if "type" in p})
        groups = {"VQA accuracy": list(predictions)}
        groups.update({type_metric(kind): [p for p in predictions if p.get("type") == kind] for kind in kinds})
        return {name: mean_vqa_accuracy([p["prediction"] for p in group], [p["answers"] for p in group])
                for name, group in groups.items()}
    return {"top-1 accuracy": top1_accuracy([p["prediction"] for p in predictions], [p["label"] for p in predictions])}


_TYPE_PREFIX = "VQA accuracy ("


def type_metric(kind: str) -> str:
    """The name of the VQA accuracy over the questions of one ``type``."""
    return f"{_TYPE_PREFIX}{kind})"


def accuracy_by_type(metrics: Mapping[str, float]) -> dict[str, float]:
    """``{type: VQA accuracy}`` from a VQA report's metrics (empty when rows had no type)."""
    return {name[len(_TYPE_PREFIX):-1]: value for name, value in metrics.items() if name.startswith(_TYPE_PREFIX)}


def metrics_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> Table:
    """One row per run, one column per metric, four decimals as in the JSON."""
    table = Table()
    table.add_column("run")
    for column in columns:
        table.add_column(column, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{values[c]:.4f}" if c in values else "-" for c in columns))
    return table


def report_table(report: EvalReport) -> Table:
    """A report's metrics, one per row, four decimals as in the JSON."""
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in report.metrics.items():
        table.add_row(metric, f"{value:.4f}")
    return table


def read_candidates(path: str | Path, what: str = "answers") -> list[str]:
    """A candidate list: a JSON list of strings, or a text file with one per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PrismerError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PrismerError(f"{path}: not valid JSON ({exc.msg})") from None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise PrismerError(f"{path}: expected a JSON list of strings")
    else:
        values = text.splitlines()
    values = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    if not values:
        raise PrismerError(f"the {what} file {path} lists nothing")
    return values


def _caption_references(data: str | Path, limit: int | None, image_root: str | Path | None) -> tuple[list[Sample], dict[str, list[str]]]:
    """One sample per image (the first caption row of it) and all captions of each image."""
    first: dict[str, Sample] = {}
    references: dict[str, list[str]] = {}
    for sample in load_data(data, ("caption",), image_root=image_root).samples:
        first.setdefault(sample.name, sample)
        references.setdefault(sample.name, []).append(sample.caption)
    images = list(first.values())[:limit]
    return images, {s.name: references[s.name] for s in images}
