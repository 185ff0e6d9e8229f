"""Inference and evaluation: captions, VQA (open-ended and ranked), classification, reports.

    from prismer_core.inference import Predictor, evaluate
    predictor = Predictor.from_checkpoint("runs/tiny-edge-ocr")
    predictor.caption(images)                           # beam search, KV cache
    predictor.answer(images, questions)                 # open-ended
    predictor.rank(images, questions, candidates, prefilter_k=128)
    predictor.classify(images, ["cat", "dog"])          # "A photo of a {}." ranked
    evaluate(predictor, "test.jsonl", "vqa").write("report.json")

Modules: inputs (images to batches), predictor, evaluation (`prismer eval`), demo
(the table of `prismer demo`), progress.
"""

from .demo import evaluate_demo
from .evaluation import TASKS, EvalReport, evaluate, metrics_of, metrics_table, read_candidates, report_table, read_classification_rows
from .inputs import ImageInput, ImageLike, as_inputs
from .predictor import DEFAULT_TEMPLATE, Predictor, Ranking, resolve_checkpoint

__all__ = [
    "DEFAULT_TEMPLATE",
    "TASKS",
    "EvalReport",
    "ImageInput",
    "ImageLike",
    "Predictor",
    "Ranking",
    "as_inputs",
    "evaluate",
    "evaluate_demo",
    "metrics_of",
    "metrics_table",
    "read_candidates",
    "read_classification_rows",
    "report_table",
    "resolve_checkpoint",
]
