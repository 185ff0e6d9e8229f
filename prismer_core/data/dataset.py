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
    answer choice, so the data order and augmentation are reproducible on resume."""

    def __init__(
        self,
        samples: Sequence[Sample],
        encoder: SampleEncoder,
        labels: LabelSource | None = None,
        caption_prompt: str = "",
        expert_dropout: float = 0.0,
        describe: bool = False,
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

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, ref: tuple[int, int]) -> EncodedSample | DataProblem:
        index, seed = ref
        sample = self.samples[index]
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
        prompt, target = self.text(sample, seed)
        description = self.description(sample, seed) if self.describe else None
        if flipped:
            prompt, target = swap_left_right(prompt), swap_left_right(target)
            description = swap_left_right(description) if description is not None else None
        image_key = int(image.key[:15], 16) if image.key else stable_key(image.where)
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
        if sample.task == "caption":
            return task_prompt("caption", caption_prompt=self.caption_prompt), sample.caption
        answer = sample.answers[int(np.random.default_rng(seed).integers(len(sample.answers)))]
        return task_prompt("vqa", sample.question), answer


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

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def pin_memory(self) -> "Batch":
        """The inputs and text tensors page-locked (the DataLoader's ``pin_memory=True`` calls
        this; without it a dataclass batch stayed pageable and every copy to the GPU blocked)."""
        return replace(self, inputs=self.inputs.pin_memory(), input_ids=self.input_ids.pin_memory(),
                       attention_mask=self.attention_mask.pin_memory(), labels=self.labels.pin_memory())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """Move to ``device``; float maps are cast to ``dtype`` when given (DeepSpeed bf16)."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(self.inputs.to(device, dtype), move(self.input_ids), move(self.attention_mask), move(self.labels),
                     self.tasks, self.problems, self.pairs.to(device) if self.pairs is not None else None)


class Collator:
    """Concatenates the samples' inputs and tokenises ``[BEGIN] prompt target [END]`` (the
    prompt masked from the loss) with the model's text codec; with ``contrastive``, the
    samples' descriptions too, as the contrastive pass's texts."""

    def __init__(self, codec: TextCodec, max_length: int = 64, contrastive: bool = False) -> None:
        self.codec, self.max_length, self.contrastive = codec, max_length, contrastive

    def __call__(self, items: Sequence[EncodedSample | DataProblem]) -> Batch | list[DataProblem]:
        problems = [item for item in items if isinstance(item, DataProblem)]
        good = [item for item in items if not isinstance(item, DataProblem)]
        if not good:
            return problems
        text = self.codec.training_batch([g.prompt for g in good], [g.target for g in good], self.max_length)
        inputs = ModelInputs.concat([g.inputs for g in good])
        pairs = None
        if self.contrastive:
            pairs = self.codec.paired_batch([g.description for g in good], [g.image_key for g in good], self.max_length)
        return Batch(inputs, text.input_ids, text.attention_mask, text.labels, [g.task for g in good], problems, pairs)
