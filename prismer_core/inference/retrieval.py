"""Image-text retrieval scored: recall@K in both directions (`prismer eval --task retrieval`).

Every caption of a manifest is a query over its distinct images (text → image: is the
caption's own image among the K most similar?), and every image a query over all captions
(image → text: is one of its own captions among the K most similar?). Similarities are the
cosines of the contrastive pass's embeddings (:meth:`Predictor.embed_images`,
:meth:`Predictor.embed_texts`). Each prediction records the rank of the right answer and the
best few items, and the recalls are computed from those ranks alone, so a reader of the report
can recompute them (or the recall of any subset of the queries, as the demo does for the
captions that name a printed word).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .embeddings import ImageEmbeddingStore
from .inputs import ImageLike
from .predictor import Predictor, Progress

#: The K of the recalls a report gives.
RECALL_AT = (1, 5, 10)
TEXT_TO_IMAGE = "text→image"
IMAGE_TO_TEXT = "image→text"
#: How many of the best items each prediction lists.
SHOWN = 5


def recall_name(direction: str, k: int) -> str:
    return f"{direction} recall@{k}"


def rank_pairs(
    predictor: Predictor,
    images: Sequence[ImageLike],
    names: Sequence[str],
    captions: Mapping[str, Sequence[str]],
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
    store: ImageEmbeddingStore | str | Path | bool | None = None,
) -> list[dict[str, Any]]:
    """One prediction per caption (text → image) and per image (image → text); ``names[i]``
    names ``images[i]`` and ``captions`` gives each name's captions."""
    image_vectors = predictor.embed_images(images, batch_size=batch_size, progress=progress, store=store)
    pairs = [(index, caption) for index, name in enumerate(names) for caption in captions[name]]
    text_vectors = predictor.embed_texts([caption for _, caption in pairs])
    similarity = text_vectors @ image_vectors.T  # [texts, images]
    owner = torch.tensor([index for index, _ in pairs])
    predictions = []
    for row, (index, caption) in enumerate(pairs):
        scores = similarity[row]
        predictions.append({
            "direction": TEXT_TO_IMAGE, "caption": caption, "image": names[index],
            "rank": 1 + int((scores > scores[index]).sum()),
            "top": [names[i] for i in _best(scores)],
        })
    for index, name in enumerate(names):
        scores = similarity[:, index]
        best_own = scores[owner == index].max()
        predictions.append({
            "direction": IMAGE_TO_TEXT, "image": name,
            "rank": 1 + int((scores[owner != index] > best_own).sum()),
            "top": [pairs[i][1] for i in _best(scores)],
        })
    return predictions


def _best(scores: torch.Tensor) -> list[int]:
    return torch.sort(scores, descending=True, stable=True).indices[:SHOWN].tolist()


def recall_metrics(predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Recall@K per direction: the share of queries whose right answer ranks K-th or better."""
    metrics = {}
    for direction in (TEXT_TO_IMAGE, IMAGE_TO_TEXT):
        ranks = [p["rank"] for p in predictions if p["direction"] == direction]
        for k in RECALL_AT:
            metrics[recall_name(direction, k)] = sum(rank <= k for rank in ranks) / len(ranks) if ranks else 0.0
    return metrics


def chance_recall(predictions: Sequence[Mapping[str, Any]], k: int) -> dict[str, float]:
    """What ranking at random would score: K of the images for a caption; for an image, the
    chance that one of its captions falls among K of all the captions (from the counts)."""
    images = sorted({p["image"] for p in predictions})
    texts = [p for p in predictions if p["direction"] == TEXT_TO_IMAGE]
    per_image = {name: sum(p["image"] == name for p in texts) for name in images}
    chance_t2i = min(1.0, k / len(images)) if images else 0.0
    total = len(texts)
    chance_i2t = 0.0
    for own in per_image.values():  # 1 - P(none of the own captions among the first k)
        miss = 1.0
        for step in range(min(k, total)):
            miss *= max(0.0, (total - own - step) / (total - step))
        chance_i2t += (1.0 - miss) / len(images)
    return {recall_name(TEXT_TO_IMAGE, k): chance_t2i, recall_name(IMAGE_TO_TEXT, k): chance_i2t}
