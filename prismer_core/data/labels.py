"""Where a sample's expert maps come from: a label store, or the experts run on the fly.

Both sources take a batch of :class:`~prismer_core.data.images.LoadedImage` and give one
``{expert: output}`` per image, so training (a batch of one, in each loader worker) and the
predictor (one batched call per chunk) read maps the same way:

* :class:`StoredLabels` reads the label store written by ``prismer label``, by content key;
* :class:`LiveLabels` runs the experts, created lazily (in each loader worker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..errors import PrismerError
from ..experts.contract import ExpertOutput, ExpertSpec, SemanticMap
from ..runner import ExpertRunner
from ..experts.settings import merged_settings, settings_record
from .images import LoadedImage
from .label_store import LabelStore, LabelStoreError


class LabelSource(Protocol):
    names: Sequence[str]

    def __call__(self, images: Sequence[LoadedImage]) -> list[dict[str, ExpertOutput]]: ...

    def settings_of(self, expert: str) -> dict[str, str] | None:
        """The settings ``expert``'s maps are made with (None: not known)."""
        ...


class StoredLabels:
    """Expert maps read from a label store (checked against the experts' versions first)."""

    def __init__(
        self,
        store: LabelStore | str,
        specs: Mapping[str, ExpertSpec],
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """``settings``: what the run was given for its experts; values that differ from
        those the labels were made with are refused, since stored labels ignore them."""
        self.store = store if isinstance(store, LabelStore) else LabelStore(store)
        self.store.check_versions(specs)
        self.store.check_settings(settings or {})
        self.names = list(specs)

    def settings_of(self, expert: str) -> dict[str, str] | None:
        return self.store.settings(expert)

    def __call__(self, images: Sequence[LoadedImage]) -> list[dict[str, ExpertOutput]]:
        return [self._one(image) for image in images]

    def _one(self, image: LoadedImage) -> dict[str, ExpertOutput]:
        if image.key is None:
            raise PrismerError(
                f"{image.where} has no name in a label store (it was given as pixels); "
                "pass image files, or let the experts run on the fly (no label store)"
            )
        outputs = {name: self.store.read(name, image.key, image.where) for name in self.names}
        for name, output in outputs.items():
            shape = output.labels.shape if isinstance(output, SemanticMap) else output.data.shape[:2]
            if tuple(shape) != image.pixels.shape[:2]:
                raise LabelStoreError(
                    f"label store {self.store.root}: '{name}' map of {image.where} is {shape[1]}×{shape[0]} "
                    f"but the image is {image.pixels.shape[1]}×{image.pixels.shape[0]}: was it labelled from other images?"
                )
        return outputs


class LiveLabels:
    """Expert maps computed on the fly; the runner is built on first use (inside each worker)."""

    def __init__(self, names: Sequence[str], device: str = "cpu", settings: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.names, self.device, self.settings = list(names), device, settings
        self._runner: ExpertRunner | None = None

    @property
    def runner(self) -> ExpertRunner:
        if self._runner is None:
            self._runner = ExpertRunner(self.names, device=self.device, settings=self.settings)
        return self._runner

    def settings_of(self, expert: str) -> dict[str, str] | None:
        return settings_record(merged_settings(expert, (self.settings or {}).get(expert)))

    def __getstate__(self) -> dict:  # loader workers build their own runner
        return {**self.__dict__, "_runner": None}

    def __call__(self, images: Sequence[LoadedImage]) -> list[dict[str, ExpertOutput]]:
        outputs = self.runner([image.pixels for image in images], [image.where for image in images])
        return [{name: outputs[name][i] for name in self.names} for i in range(len(images))]
