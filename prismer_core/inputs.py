"""What the vision side of the model reads for a batch of images: the typed model input.

Made by one sample encoder (:class:`prismer_core.data.encoding.SampleEncoder`) for training,
evaluation and the predictor alike, and taken by the model's ``forward``, ``generate`` and
``score``. Every tensor has the batch first; ``present`` says, per expert, which samples have
its map (empty: all of them), so a run with missing experts can say so instead of feeding zeros.

A semantic expert's map travels compact: an S×S map of label ids and a short table of each
sample's label embeddings (``label_tables``); the model's semantic stems read them as they are.
Expanded on the host, three semantic experts made a 224 px sample 41 MB (64 floats a pixel each),
2.6 GB a batch of 64 to copy to a GPU every step; compact, 3 MB.
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
    #: per expert: dense maps [B, C, S, S] float in [-1, 1]; semantic ones [B, S, S] int32, each
    #: pixel a row of that sample's ``label_tables`` entry
    experts: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per expert that has instances [B, S, S] integers, int32 from the data path (0: no instance)
    instances: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per expert [B] bool: whether each sample has that expert's map (absent key: all do)
    present: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per semantic expert [B, K, C] float: row k is the embedding of the sample's label k (row 0
    #: background; rows past a sample's labels are zero padding)
    label_tables: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "ModelInputs":
        """On ``device``; the image and maps cast to ``dtype`` when given (ids stay integers)."""

        def floats(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device, non_blocking=True)
            return t.to(dtype) if dtype is not None else t

        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return ModelInputs(
            floats(self.rgb),
            {name: move(t) if name in self.label_tables else floats(t) for name, t in self.experts.items()},
            {name: move(t) for name, t in self.instances.items()},
            {name: move(t) for name, t in self.present.items()},
            {name: floats(t) for name, t in self.label_tables.items()},
        )

    def pin_memory(self) -> "ModelInputs":
        """In page-locked memory, so ``to(cuda)`` copies asynchronously and at full speed. The
        training loader calls it (``pin_memory=True`` pins only types that say how)."""
        pin = lambda maps: {name: t.pin_memory() for name, t in maps.items()}  # noqa: E731
        return ModelInputs(self.rgb.pin_memory(), pin(self.experts), pin(self.instances), pin(self.present),
                           pin(self.label_tables))

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
            {name: t[rows] for name, t in self.label_tables.items()},
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
        tables = dict(self.label_tables)
        zeroed = lambda t, keep: t * keep.view(-1, *[1] * (t.ndim - 1)).to(t.dtype)  # noqa: E731
        for name, dropped in absent.items():
            dropped = dropped.to(torch.bool)
            if not bool(dropped.any()):
                continue
            keep = ~dropped
            present[name] = self.present_mask(name) & keep
            experts[name] = zeroed(self.experts[name], keep)
            if name in instances:
                instances[name] = zeroed(instances[name], keep)
            if name in tables:  # every label of a dropped sample looks up a zero row
                tables[name] = zeroed(tables[name], keep)
        return ModelInputs(self.rgb, experts, instances, present, tables)

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
            {name: _padded_cat([p.label_tables[name] for p in parts]) for name in first.label_tables},
        )


def _padded_cat(tables: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, K, C] tables of different K as one batch, the shorter padded with zero rows (no
    label id of theirs reaches the padding)."""
    rows = max(t.shape[1] for t in tables)
    return torch.cat([torch.nn.functional.pad(t, (0, 0, 0, rows - t.shape[1])) for t in tables])
