"""Inference and evaluation: captions, VQA (open-ended and ranked), classification, reports.

    from prismer_core.inference import Predictor, evaluate
    predictor = Predictor.from_checkpoint("runs/tiny-edge-ocr")
    predictor.caption(images)                           # beam search, KV cache
    predictor.answer(images, questions)                 # open-ended
    predictor.rank(images, questions, candidates, prefilter_k=128)
    predictor.classify(images, ["cat", "dog"])          # "A photo of a {}." ranked
    predictor.retrieve(["a red circle"], images, k=5)   # the contrastive pass (MaMMUT)
    evaluate(predictor, "test.jsonl", "vqa").write("report.json")

Modules: inputs (what users pass as images), embeddings (stored image embeddings, search),
predictor, retrieval (recall@K), evaluation (`prismer eval`).
"""

from ..checkpoint import resolve_checkpoint
from .embeddings import ImageEmbeddingStore, Match, default_store_root
from .evaluation import EVAL_TASKS, EvalReport, evaluate, metrics_of, metrics_table, read_candidates, report_table
from .inputs import ImageLike, as_inputs
from .predictor import CLASSIFY_BY, DEFAULT_TEMPLATE, INFERENCE_DTYPES, Predictor, Ranking

__all__ = [
    "CLASSIFY_BY",
    "DEFAULT_TEMPLATE",
    "EVAL_TASKS",
    "EvalReport",
    "INFERENCE_DTYPES",
    "ImageEmbeddingStore",
    "ImageLike",
    "Match",
    "Predictor",
    "Ranking",
    "as_inputs",
    "default_store_root",
    "evaluate",
    "metrics_of",
    "metrics_table",
    "read_candidates",
    "report_table",
    "resolve_checkpoint",
]
