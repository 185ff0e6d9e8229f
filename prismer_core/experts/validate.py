"""Checks every expert output against the contract, so a faulty plugin is named, not guessed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import PrismerError
from .contract import DenseMap, ExpertOutput, ExpertSpec, SemanticMap


class ExpertOutputError(PrismerError):
    """An expert returned something that breaks the contract (or raised while predicting)."""

    def __init__(self, expert: str, image: str, problem: str, plugin: str = "") -> None:
        self.expert, self.image, self.problem, self.plugin = expert, image, problem, plugin
        by = f" (from {plugin})" if plugin else ""
        super().__init__(f"expert '{expert}'{by} on image {image}: {problem}")


class ExpertLoadError(PrismerError):
    """An expert's ``load()`` raised: its weights or its model could not be loaded."""

    def __init__(self, expert: str, problem: str, plugin: str = "") -> None:
        self.expert, self.problem, self.plugin = expert, problem, plugin
        by = f" (from {plugin})" if plugin else ""
        super().__init__(f"expert '{expert}'{by} could not be loaded: {problem}")


def check_output(spec: ExpertSpec, out: object, height: int, width: int) -> str | None:
    """Return what is wrong with ``out`` for an image of ``height``×``width``, or None."""
    if spec.is_semantic:
        if not isinstance(out, SemanticMap):
            return f"a semantic expert must return SemanticMap, got {type(out).__name__}"
        labels = out.labels
        if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
            return f"labels must be an integer numpy array, got {_describe(labels)}"
        if labels.shape != (height, width):
            return f"labels have shape {labels.shape}, expected {(height, width)}"
        if labels.size and (labels.min() < 0 or labels.max() > len(out.names)):
            return (
                f"label values span {labels.min()}..{labels.max()} but only "
                f"{len(out.names)} names were given (0 is background)"
            )
        if not all(isinstance(n, str) and n for n in out.names):
            return "names must be non-empty strings"
        if spec.vocabulary and not spec.open_vocabulary:
            unknown = sorted(set(out.names) - set(spec.vocabulary))
            if unknown:
                return f"names outside the declared vocabulary: {unknown[:5]}"
        if out.instances is not None:
            inst = out.instances
            if not isinstance(inst, np.ndarray) or not np.issubdtype(inst.dtype, np.integer):
                return f"instances must be an integer numpy array, got {_describe(inst)}"
            if inst.shape != (height, width):
                return f"instances have shape {inst.shape}, expected {(height, width)}"
            if inst.size and inst.min() < 0:
                return "instance ids must be >= 0"
        return None
    if not isinstance(out, DenseMap):
        return f"a dense expert must return DenseMap, got {type(out).__name__}"
    data = out.data
    if not isinstance(data, np.ndarray) or data.dtype != np.float32:
        return f"data must be a float32 numpy array, got {_describe(data)}"
    if data.shape != (height, width, spec.channels):
        return f"data has shape {data.shape}, expected {(height, width, spec.channels)}"
    if not np.isfinite(data).all():
        return "data contains NaN or infinite values"
    if data.size and (data.min() < -1.0 - 1e-4 or data.max() > 1.0 + 1e-4):
        return f"values span [{data.min():.3g}, {data.max():.3g}], outside [-1, 1]"
    return None


def validate_outputs(
    spec: ExpertSpec,
    outputs: object,
    images: Sequence[np.ndarray],
    image_ids: Sequence[str],
    plugin: str = "",
) -> list[ExpertOutput]:
    """Raise :class:`ExpertOutputError` naming the expert and image on the first bad output."""
    if not isinstance(outputs, (list, tuple)) or len(outputs) != len(images):
        count = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
        raise ExpertOutputError(
            spec.name, describe_batch(image_ids), f"returned {count} outputs for {len(images)} images", plugin,
        )
    for out, image, image_id in zip(outputs, images, image_ids):
        problem = check_output(spec, out, image.shape[0], image.shape[1])
        if problem:
            raise ExpertOutputError(spec.name, image_id, problem, plugin)
    return list(outputs)


def describe_batch(image_ids: Sequence[str]) -> str:
    """How an error names a batch: its one image, or its size and first image."""
    if not image_ids:
        return "(empty batch)"
    return image_ids[0] if len(image_ids) == 1 else f"batch of {len(image_ids)} starting {image_ids[0]}"


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of {value.dtype}"
    return type(value).__name__
