"""The one place a sample becomes model input: training, evaluation and the predictor call it.

An image and its expert maps go through the same crop/flip/resize
(:class:`~prismer_core.data.transforms.PairedTransform`), semantic maps through the label
encoder (label ids and a table of their embeddings, which the model reads), experts with
instances get an empty instance map when the expert found none, and the image is normalised
with the model's mean and std. An expert of the model that has no map for the sample (not
installed here, and the run said ``--missing-experts drop``) is marked absent in
``ModelInputs.present`` with a zero map in its place, which the model masks out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..errors import PrismerError
from ..experts.contract import ExpertOutput, ExpertSpec, SemanticMap
from ..inputs import ModelInputs
from .transforms import PairedTransform, normalise


@dataclass(frozen=True)
class SampleEncoder:
    """Image + expert maps -> :class:`ModelInputs` of one sample (a batch of one)."""

    transform: PairedTransform
    mean: Sequence[float]
    std: Sequence[float]
    experts: Mapping[str, ExpertSpec]
    label_encoder: Any = None

    def __post_init__(self) -> None:
        if any(spec.is_semantic for spec in self.experts.values()) and self.label_encoder is None:
            raise PrismerError("semantic experts need a label encoder (prismer_core.semantic.load_label_encoder)")

    def for_evaluation(self) -> "SampleEncoder":
        """The same encoder with the deterministic transform (resize only, no flip)."""
        return replace(self, transform=PairedTransform(self.transform.size, train=False))

    def __call__(self, image: np.ndarray, maps: Mapping[str, ExpertOutput], seed: int = 0) -> tuple[ModelInputs, bool]:
        """The sample's inputs, and whether it was flipped (its text must then swap left/right).

        ``maps`` may lack some of the experts: those are absent for this sample (see the module doc)."""
        aligned = self.transform(image, maps, seed)
        experts: dict[str, torch.Tensor] = dict(aligned.dense)
        tables: dict[str, torch.Tensor] = {}
        for name, labels in aligned.labels.items():
            output = maps[name]
            assert isinstance(output, SemanticMap)
            ids, table = self.label_encoder.compact(SemanticMap(labels.numpy(), output.names))
            experts[name], tables[name] = torch.from_numpy(ids), torch.from_numpy(table)
        instances = {  # int32 as the label store keeps them: half the bytes of a batch's int64
            name: aligned.instances.get(name, torch.zeros(aligned.rgb.shape[1:], dtype=torch.int32)).to(torch.int32)[None]
            for name, spec in self.experts.items() if spec.has_instances
        }
        absent = [name for name in self.experts if name not in experts]
        size = aligned.rgb.shape[1:]
        for name in absent:
            if self.experts[name].is_semantic:  # every pixel looks up the one zero row
                experts[name] = torch.zeros(*size, dtype=torch.int32)
                tables[name] = torch.zeros(1, self.label_encoder.channels)
            else:
                experts[name] = torch.zeros(self.experts[name].channels, *size)
        inputs = ModelInputs(
            normalise(aligned.rgb, self.mean, self.std)[None],
            {name: experts[name][None] for name in self.experts},
            instances,
            {name: torch.tensor([name not in absent]) for name in self.experts} if absent else {},
            {name: tables[name][None] for name in self.experts if name in tables},
        )
        return inputs, aligned.flipped
