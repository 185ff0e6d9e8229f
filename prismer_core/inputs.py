"""What the vision side of the model reads for a batch of images: the typed model input.

Made by one sample encoder (:class:`prismer_core.data.encoding.SampleEncoder`) for training,
evaluation and the predictor alike, and taken by the model's ``forward``, ``generate`` and
``score``. Every tensor has the batch first; ``present`` says, per expert, which samples have
its map (empty: all of them), so a run with missing experts can say so instead of feeding zeros.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

Rows = int | slice | Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class ModelInputs:
    #: [B, 3, S, S], normalised with the model's mean and std
    rgb: torch.Tensor
    #: per expert [B, C, S, S]: dense maps in [-1, 1], semantic ones as label embeddings
    experts: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per expert that has instances [B, S, S] int64 (0: no instance)
    instances: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per expert [B] bool: whether each sample has that expert's map (absent key: all do)
    present: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "ModelInputs":
        """On ``device``; the image and maps cast to ``dtype`` when given (ids stay integers)."""

        def floats(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device, non_blocking=True)
            return t.to(dtype) if dtype is not None else t

        return ModelInputs(
            floats(self.rgb),
            {name: floats(t) for name, t in self.experts.items()},
            {name: t.to(device, non_blocking=True) for name, t in self.instances.items()},
            {name: t.to(device, non_blocking=True) for name, t in self.present.items()},
        )

    def select(self, rows: Rows) -> "ModelInputs":
        """The samples ``rows`` (an index keeps the batch dimension: one sample is a batch of one)."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1)
        elif not isinstance(rows, (slice, torch.Tensor)):
            rows = torch.as_tensor(list(rows), dtype=torch.long)
        return ModelInputs(
            self.rgb[rows],
            {name: t[rows] for name, t in self.experts.items()},
            {name: t[rows] for name, t in self.instances.items()},
            {name: t[rows] for name, t in self.present.items()},
        )

    def present_mask(self, name: str) -> torch.Tensor:
        """[B] bool: which samples have ``name``'s map (all of them when ``present`` has no entry)."""
        mask = self.present.get(name)
        return mask if mask is not None else torch.ones(len(self), dtype=torch.bool, device=self.rgb.device)

    def without(self, absent: Mapping[str, torch.Tensor]) -> "ModelInputs":
        """These inputs with the maps of ``absent`` (per expert, [B] bool: True drops that
        sample's map) marked missing in ``present`` and zeroed, so nothing of them reaches the
        model even through code that ignores the mask."""
        experts, instances, present = dict(self.experts), dict(self.instances), dict(self.present)
        for name, dropped in absent.items():
            dropped = dropped.to(torch.bool)
            if not bool(dropped.any()):
                continue
            keep = ~dropped
            present[name] = self.present_mask(name) & keep
            experts[name] = self.experts[name] * keep.view(-1, *[1] * (self.experts[name].ndim - 1)).to(self.experts[name].dtype)
            if name in instances:
                instances[name] = instances[name] * keep.view(-1, 1, 1).to(instances[name].dtype)
        return ModelInputs(self.rgb, experts, instances, present)

    @classmethod
    def concat(cls, parts: Sequence["ModelInputs"]) -> "ModelInputs":
        """One batch of the samples of ``parts`` (each a batch, often of one), in order; an
        expert some parts mark in ``present`` and others do not is present in the others."""
        first = parts[0]
        marked = list(dict.fromkeys(name for p in parts for name in p.present))
        return cls(
            torch.cat([p.rgb for p in parts]),
            {name: torch.cat([p.experts[name] for p in parts]) for name in first.experts},
            {name: torch.cat([p.instances[name] for p in parts]) for name in first.instances},
            {name: torch.cat([p.present_mask(name) for p in parts]) for name in marked},
        )
