"""The broad vocabulary the label projection is fitted on: expert label sets plus general English.

OCR and open-vocabulary experts produce words no list foresees, so the space is fitted on a
general word list too (``resources/words.txt``, made by ``tools/make_words.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

from ..experts.contract import normalize_label
from ..registry import Registry

#: The text whose embedding stands for label 0 (no label) in every semantic map.
BACKGROUND_TEXT = "background"


def general_words() -> list[str]:
    """The shipped general English word list, one word per line."""
    text = resources.files("prismer_core").joinpath("resources/words.txt").read_text(encoding="utf-8")
    return [word for word in (line.strip() for line in text.splitlines()) if word]


def expert_vocabulary(registry: Registry) -> list[str]:
    """Every label declared by a registered semantic expert (usable or not: the spec is enough)."""
    labels: list[str] = []
    for entry in registry.experts.values():
        if entry.spec is not None and entry.spec.is_semantic and entry.status != "broken":
            labels.extend(entry.spec.vocabulary)
    return labels


def fitting_vocabulary(registry: Registry, extra: Iterable[str] = ()) -> list[str]:
    """The sorted, de-duplicated vocabulary a projection is fitted on."""
    words = [*general_words(), *expert_vocabulary(registry), *extra, BACKGROUND_TEXT]
    return sorted({normalize_label(w) for w in words} - {""})
