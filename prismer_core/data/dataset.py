"""Samples to training batches: read the image, get its expert maps, encode, tokenise.

Each sample goes through the same :class:`~prismer_core.data.encoding.SampleEncoder` the
predictor uses, and its text through the model's :class:`~prismer_core.text.TextCodec`.

With ``expert_dropout`` each expert's map of a training sample is left out with that
probability (drawn from the sample's seed, so a resumed run drops what the uninterrupted one
would have): the sample is marked as lacking it (``ModelInputs.present``), which the model
masks, so the model learns to answer with whichever experts a user has.

With ``describe`` (training with MaMMUT's contrastive pass) every sample also carries a
description of its image for the contrastive texts: a caption row its own caption, a question
row one of its image's captions in the data (drawn by the sample's seed; none when the image
has no caption row), and a number naming the image's content, so that rows of one image in a
batch are not taken for negatives of each other.

A sample that cannot be read becomes a :class:`DataProblem` instead of an exception, so a
bad image deep in a loader worker reaches the training loop as a message naming its
``file:line``; the loop then stops or skips by the ``--on-bad-row`` policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..errors import PrismerError
from ..inputs import ModelInputs
from ..text import PairedText, TextCodec, stable_key, task_prompt
from .encoding import SampleEncoder
from .images import BadImageError
from .labels import LabelSource
from .manifest import Sample
from .transforms import swap_left_right


#: Keeps the expert-dropout draws apart from the crop, flip and answer draws of the same seed.
_DROPOUT_STREAM = 0x5EED_D0

@dataclass(frozen=True)
class DataProblem:
    """A sample that could not be used. ``fatal`` problems stop the run whatever the policy
    (a label store that lacks an image is a set-up mistake, not a bad row)."""

    where: str
    reason: str
    fatal: bool = False

    def __str__(self) -> str:
        return self.reason if self.where in self.reason else f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class EncodedSample:
    """One sample ready to collate: its model inputs (a batch of one) and its text."""

    inputs: ModelInputs
    prompt: str
    target: str
    task: str
    where: str
    #: With ``describe``: a caption of the image (None: the data has none), and the image's key.
    description: str | None = None
    image_key: int = 0


class TrainingData(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(sample index, seed)``; the seed drives crop, flip and
    answer choice, so the data order and augmentation are reproducible on resume.

    With ``by_image`` an index names an image instead, and an item is the list of all its rows
    (its captions and questions), which share one encoding of the image (one crop, one flip):
    a step then learns every text of each of its images while the vision side runs once per
    image (``prismer train --group-by-image``)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        encoder: SampleEncoder,
        labels: LabelSource | None = None,
        caption_prompt: str = "",
        expert_dropout: float = 0.0,
        describe: bool = False,
        by_image: bool = False,
    ) -> None:
        if not 0.0 <= expert_dropout < 1.0:
            raise PrismerError(f"expert dropout must lie in [0, 1), got {expert_dropout}")
        self.samples = list(samples)
        self.encoder = encoder
        self.labels = labels
        self.caption_prompt = caption_prompt
        self.expert_dropout = expert_dropout
        self.describe = describe
        if encoder.experts and labels is None:
            raise PrismerError("experts were given but no source of their maps (label store or live experts)")
        #: The captions of each image in the data (by where its bytes are), for ``describe``.
        self.captions: dict[str, list[str]] = {}
        for sample in self.samples if describe else ():
            if sample.task == "caption":
                self.captions.setdefault(sample.image.source, []).append(sample.caption)
        #: With ``by_image``: the sample indices of each image, in the order images first appear.
        self.images: list[list[int]] | None = None
        if by_image:
            rows: dict[str, list[int]] = {}
            for index, sample in enumerate(self.samples):
                rows.setdefault(sample.image.source, []).append(index)
            self.images = list(rows.values())

    def __len__(self) -> int:
        return len(self.samples) if self.images is None else len(self.images)

    def __getitem__(self, ref: tuple[int, int]) -> EncodedSample | list[EncodedSample] | DataProblem:
        index, seed = ref
        rows = [index] if self.images is None else self.images[index]
        sample = self.samples[rows[0]]
        try:
            image = sample.image.load()
            maps = self.labels([image])[0] if self.labels is not None else {}
        except BadImageError as exc:
            return DataProblem(sample.where, str(exc))
        except PrismerError as exc:
            return DataProblem(sample.where, str(exc), fatal=True)
        inputs, flipped = self.encoder(image.pixels, maps, seed)
        if self.expert_dropout:
            inputs = inputs.without(self.dropped_experts(seed))
        image_key = int(image.key[:15], 16) if image.key else stable_key(image.where)
        encoded = [self._row(self.samples[row], seed, inputs, flipped, image_key) for row in rows]
        return encoded[0] if self.images is None else encoded

    def _row(self, sample: Sample, seed: int, inputs: ModelInputs, flipped: bool, image_key: int) -> EncodedSample:
        prompt, target = self.text(sample, seed)
        description = self.description(sample, seed) if self.describe else None
        if flipped:
            prompt, target = swap_left_right(prompt), swap_left_right(target)
            description = swap_left_right(description) if description is not None else None
        return EncodedSample(inputs, prompt, target, sample.task, sample.where, description, image_key)

    def description(self, sample: Sample, seed: int) -> str | None:
        """The text the contrastive pass pairs with this sample's image (module docstring)."""
        if sample.task == "caption":
            return sample.caption
        captions = self.captions.get(sample.image.source)
        if not captions:
            return None
        return captions[int(np.random.default_rng([seed, 1]).integers(len(captions)))]

    def dropped_experts(self, seed: int) -> dict[str, torch.Tensor]:
        """Per expert, whether the sample of ``seed`` goes without its map ([1] bool); each
        expert is dropped on its own, so a sample may lose all of them (it then trains as RGB only)."""
        draws = np.random.default_rng([seed, _DROPOUT_STREAM]).random(len(self.encoder.experts))
        return {name: torch.tensor([bool(draw < self.expert_dropout)]) for name, draw in zip(self.encoder.experts, draws)}

    def text(self, sample: Sample, seed: int) -> tuple[str, str]:
        """(prompt, target); with several reference answers, one is drawn by the sample's seed
        (answers given more often are drawn more often)."""
        pairs = training_texts(sample, self.caption_prompt)
        return pairs[int(np.random.default_rng(seed).integers(len(pairs)))] if len(pairs) > 1 else pairs[0]


def training_texts(sample: Sample, caption_prompt: str = "") -> list[tuple[str, str]]:
    """Every (prompt, target) a sample may train on: its caption, or its question with each
    reference answer (repeats kept: an answer given more often is drawn more often)."""
    if sample.task == "caption":
        return [(task_prompt("caption", caption_prompt=caption_prompt), sample.caption)]
    prompt = task_prompt("vqa", sample.question)
    return [(prompt, answer) for answer in sample.answers]


@dataclass
class Batch:
    """A collated batch: model inputs, text tensors, and the samples that were left out."""

    inputs: ModelInputs
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    tasks: list[str]
    problems: list[DataProblem]
    #: The contrastive pass's texts (training with it; possibly none in this batch).
    pairs: PairedText | None = None
    #: [rows] the image (row of ``inputs``) each text row reads; None: row ``i`` reads image ``i``.
    row_image: torch.Tensor | None = None
    #: Rows sorted by length in runs ``(first, end, width)`` that need only ``width`` positions
    #: (:func:`length_buckets`); None: every row runs at the full width.
    buckets: tuple[tuple[int, int, int], ...] | None = None

    @property
    def size(self) -> int:
        """Images in the batch (rows of ``inputs``; grouped by image, they carry more text rows)."""
        return int(self.inputs.rgb.shape[0])

    def arguments(self) -> dict[str, Any]:
        """The batch as :meth:`Prismer.forward <prismer_core.model.Prismer.forward>`'s keyword
        arguments: the rows are sorted by length, so they need ``row_image`` and ``buckets``."""
        return {"inputs": self.inputs, "input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "labels": self.labels, "pairs": self.pairs, "row_image": self.row_image, "buckets": self.buckets}

    def pin_memory(self) -> "Batch":
        """The inputs and text tensors page-locked (the DataLoader's ``pin_memory=True`` calls
        this; without it a dataclass batch stayed pageable and every copy to the GPU blocked)."""
        return replace(self, inputs=self.inputs.pin_memory(), input_ids=self.input_ids.pin_memory(),
                       attention_mask=self.attention_mask.pin_memory(), labels=self.labels.pin_memory(),
                       row_image=self.row_image.pin_memory() if self.row_image is not None else None)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """Move to ``device``; float maps are cast to ``dtype`` when given (DeepSpeed bf16)."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(self.inputs.to(device, dtype), move(self.input_ids), move(self.attention_mask), move(self.labels),
                     self.tasks, self.problems, self.pairs.to(device) if self.pairs is not None else None,
                     move(self.row_image) if self.row_image is not None else None, self.buckets)


def length_buckets(lengths: Sequence[int], most: int = 3) -> tuple[tuple[int, int, int], ...]:
    """Runs ``(first, end, width)`` of rows sorted by length (ascending), at most ``most`` of
    them, that minimise the positions computed (rows × width summed): captions and short
    answers padded to one width cost the decoder twice what they need (a demo batch)."""
    distinct = sorted(set(lengths))
    ends = [sum(1 for n in lengths if n <= width) for width in distinct]  # rows up to each width
    best: dict[tuple[int, int], tuple[int, list[int]]] = {}  # (last index, runs) -> (cost, cut indices)

    def cost(start: int, stop: int) -> int:  # rows after distinct[start - 1] up to distinct[stop]
        return (ends[stop] - (ends[start - 1] if start else 0)) * distinct[stop]

    for stop in range(len(distinct)):
        best[stop, 1] = (cost(0, stop), [stop])
        for runs in range(2, most + 1):
            options = [(best[cut, runs - 1][0] + cost(cut + 1, stop), best[cut, runs - 1][1] + [stop])
                       for cut in range(stop) if (cut, runs - 1) in best]
            if options:
                best[stop, runs] = min(options)
    _, cuts = min(best[key] for key in best if key[0] == len(distinct) - 1)
    runs, first = [], 0
    for cut in cuts:
        runs.append((first, ends[cut], distinct[cut]))
        first = ends[cut]
    return tuple(runs)


class Collator:
    """Concatenates the samples' inputs and tokenises ``[BEGIN] prompt target [END]`` (the
    prompt masked from the loss) with the model's text codec; with ``contrastive``, the
    samples' descriptions too, as the contrastive pass's texts. The text rows are sorted by
    length and cut into :func:`length_buckets`, which the model decodes each at its own width
    (the same numbers as one padded batch, fewer positions)."""

    def __init__(self, codec: TextCodec, max_length: int = 64, contrastive: bool = False) -> None:
        self.codec, self.max_length, self.contrastive = codec, max_length, contrastive

    def __call__(self, items: Sequence[EncodedSample | list[EncodedSample] | DataProblem]) -> Batch | list[DataProblem]:
        problems = [item for item in items if isinstance(item, DataProblem)]
        good = [item for item in items if not isinstance(item, DataProblem)]
        if not good:
            return problems
        grouped = isinstance(good[0], list)  # an image's rows (TrainingData's by_image)
        images = [group[0] for group in good] if grouped else good
        rows = [row for group in good for row in group] if grouped else good
        text = self.codec.training_batch([r.prompt for r in rows], [r.target for r in rows], self.max_length)
        inputs = ModelInputs.concat([i.inputs for i in images])
        row_image = [i for i, group in enumerate(good) for _ in group] if grouped else list(range(len(rows)))
        lengths = text.attention_mask.sum(1)
        order = torch.sort(lengths, stable=True).indices
        pairs = None
        if self.contrastive:  # one text per image: an image's own rows are no negatives of it
            pairs = self.codec.paired_batch([i.description for i in images], [i.image_key for i in images], self.max_length)
        return Batch(inputs, text.input_ids[order], text.attention_mask[order], text.labels[order],
                     [rows[i].task for i in order.tolist()], problems, pairs, torch.tensor(row_image)[order],
                     length_buckets(lengths[order].tolist()))
