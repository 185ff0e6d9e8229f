"""Samples to model batches: read the image, get its expert maps, transform them alike, tokenise.

Expert maps come from one of two sources with the same interface:

* :class:`StoredLabels` reads the label store written by ``prismer label`` (keys from
  :func:`prismer_core.data.images.image_key`, as the manifest reader computes them);
* :class:`LiveLabels` runs the experts on the fly, created lazily in each loader worker.

A sample that cannot be read becomes a :class:`DataProblem` instead of an exception, so a
bad image deep in a loader worker reaches the training loop as a message naming its
``file:line``; the loop then stops or skips by the ``--on-bad-row`` policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import PrismerError
from ..experts.contract import ExpertOutput, ExpertSpec, SemanticMap
from ..experts.settings import merged_settings, settings_record
from .images import BadImageError
from .label_store import LabelStore, LabelStoreError
from .manifest import Sample, TarMember, read_sample_image
from .text import encode_for_training, task_prompt
from .transforms import PairedTransform, normalise, swap_left_right


@dataclass(frozen=True)
class DataProblem:
    """A sample that could not be used. ``fatal`` problems stop the run whatever the policy
    (a label store that lacks an image is a set-up mistake, not a bad row)."""

    where: str
    reason: str
    fatal: bool = False

    def __str__(self) -> str:
        return self.reason if self.where in self.reason else f"{self.where}: {self.reason}"


class LabelSource(Protocol):
    names: Sequence[str]

    def __call__(self, sample: Sample, image: np.ndarray) -> dict[str, ExpertOutput]: ...

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

    def __call__(self, sample: Sample, image: np.ndarray) -> dict[str, ExpertOutput]:
        if isinstance(sample.image, TarMember):
            raise LabelStoreError(
                f"{sample.where}: label stores hold labels of image files; for tar shards run the experts on the fly (no --labels)"
            )
        outputs = {name: self.store.read(name, sample.key) for name in self.names}
        for name, output in outputs.items():
            shape = output.labels.shape if isinstance(output, SemanticMap) else output.data.shape[:2]
            if tuple(shape) != image.shape[:2]:
                raise LabelStoreError(
                    f"label store {self.store.root}: '{name}' map of {sample.key} is {shape[1]}×{shape[0]} "
                    f"but the image is {image.shape[1]}×{image.shape[0]}: was it labelled from other images?"
                )
        return outputs


class LiveLabels:
    """Expert maps computed on the fly; the runner is built on first use, inside each worker."""

    def __init__(self, names: Sequence[str], device: str = "cpu", settings: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.names, self.device, self.settings = list(names), device, settings
        self._runner = None

    def settings_of(self, expert: str) -> dict[str, str] | None:
        return settings_record(merged_settings(expert, (self.settings or {}).get(expert)))

    def __getstate__(self) -> dict:  # loader workers build their own runner
        return {**self.__dict__, "_runner": None}

    def __call__(self, sample: Sample, image: np.ndarray) -> dict[str, ExpertOutput]:
        if self._runner is None:
            from ..experts.runner import ExpertRunner

            self._runner = ExpertRunner(self.names, device=self.device, settings=self.settings)
        outputs = self._runner([image], [sample.where])
        return {name: outputs[name][0] for name in self.names}


class TrainingData(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(sample index, seed)``; the seed drives crop, flip and
    answer choice, so the data order and augmentation are reproducible on resume."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: PairedTransform,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        expert_specs: Mapping[str, ExpertSpec] | None = None,
        labels: LabelSource | None = None,
        label_encoder: Any = None,
        caption_prompt: str = "",
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mean, self.std = list(image_mean), list(image_std)
        self.expert_specs = dict(expert_specs or {})
        self.labels = labels
        self.label_encoder = label_encoder
        self.caption_prompt = caption_prompt
        if self.expert_specs and labels is None:
            raise PrismerError("experts were given but no source of their maps (label store or live experts)")
        if any(s.is_semantic for s in self.expert_specs.values()) and label_encoder is None:
            raise PrismerError("semantic experts need a label encoder (prismer_core.semantic.load_label_encoder)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, ref: tuple[int, int]) -> dict[str, Any] | DataProblem:
        index, seed = ref
        sample = self.samples[index]
        try:
            image = read_sample_image(sample)
            maps = self.labels(sample, image) if self.labels is not None else {}
        except BadImageError as exc:
            return DataProblem(sample.where, str(exc))
        except PrismerError as exc:
            return DataProblem(sample.where, str(exc), fatal=True)
        aligned = self.transform(image, maps, seed)
        experts: dict[str, torch.Tensor] = dict(aligned.dense)
        instances: dict[str, torch.Tensor] = {}
        for name, labels in aligned.labels.items():
            output = maps[name]
            assert isinstance(output, SemanticMap)
            resized = SemanticMap(labels.numpy(), output.names)
            experts[name] = torch.from_numpy(self.label_encoder.encode(resized)).permute(2, 0, 1).contiguous()
        for name, spec in self.expert_specs.items():
            if spec.has_instances:
                instances[name] = aligned.instances.get(name, torch.zeros_like(aligned.rgb[0], dtype=torch.long))
        prompt, target = self.text(sample, seed)
        if aligned.flipped:
            prompt, target = swap_left_right(prompt), swap_left_right(target)
        return {
            "rgb": normalise(aligned.rgb, self.mean, self.std),
            "experts": {name: experts[name] for name in self.expert_specs},
            "instances": instances,
            "prompt": prompt,
            "target": target,
            "task": sample.task,
            "where": sample.where,
        }

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

    inputs: dict[str, Any]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    tasks: list[str]
    problems: list[DataProblem]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """Move to ``device``; float maps are cast to ``dtype`` when given (DeepSpeed bf16)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device, non_blocking=True)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        inputs = {
            "rgb": move(self.inputs["rgb"]),
            "experts": {n: move(t) for n, t in self.inputs["experts"].items()},
            "instances": {n: move(t) for n, t in self.inputs["instances"].items()},
        }
        return Batch(inputs, move(self.input_ids), move(self.attention_mask), move(self.labels), self.tasks, self.problems)


class Collator:
    """Stacks tensors and tokenises ``[BOS] prompt target [EOS]`` with the prompt masked."""

    def __init__(self, tokenizer: Any, max_length: int = 64) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: Sequence[dict[str, Any] | DataProblem]) -> Batch | list[DataProblem]:
        problems = [item for item in items if isinstance(item, DataProblem)]
        good = [item for item in items if not isinstance(item, DataProblem)]
        if not good:
            return problems
        text = encode_for_training(self.tokenizer, [g["prompt"] for g in good], [g["target"] for g in good], self.max_length)
        inputs = {
            "rgb": torch.stack([g["rgb"] for g in good]),
            "experts": {n: torch.stack([g["experts"][n] for g in good]) for n in good[0]["experts"]},
            "instances": {n: torch.stack([g["instances"][n] for g in good]) for n in good[0]["instances"]},
        }
        return Batch(inputs, text["input_ids"], text["attention_mask"], text["labels"], [g["task"] for g in good], problems)
