"""The Python API of a trained model: captions, open-ended answers, answer ranking, classification.

    from prismer_core.inference import Predictor
    predictor = Predictor.from_checkpoint("runs/demo-edge-ocr")      # a run folder or a checkpoint
    predictor.caption(["a.png", pil_image])                           # ['two shapes: ...', ...]
    predictor.answer(["a.png"], ["what colour is the star?"])         # ['red']
    predictor.rank(["a.png"], ["what colour is the star?"], ["red", "blue"], prefilter_k=128)[0].answer
    predictor.classify(["a.png"], ["circle", "star"])[0].answer      # "A photo of a {}." ranked

The checkpoint's experts run on the fly, or their maps are read from the label store the
model was trained with (``labels=``); prompts are the ones training used (the run's caption
prompt, the VQA template of :mod:`prismer_core.data.text`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, CheckpointInfo, load_checkpoint, read_checkpoint_info
from ..data.text import task_prompt
from ..errors import PrismerError
from .inputs import BatchBuilder, ImageInput, ImageLike, as_inputs

#: Inference precisions, by the name users pass.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}

Progress = Callable[[int], None]
DEFAULT_TEMPLATE = "A photo of a {}."


@dataclass(frozen=True)
class Ranking:
    """Candidates of one image, best first, with their log-likelihoods (summed over tokens)."""

    answer: str
    candidates: tuple[str, ...]
    scores: tuple[float, ...]


class Predictor:
    """A model with its experts, label encoder and prompts; build with :meth:`from_checkpoint`."""

    def __init__(
        self,
        model: torch.nn.Module,
        builder: BatchBuilder,
        caption_prompt: str = "",
        image_root: str | Path | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        self.model = model.eval()
        self.builder = builder
        self.caption_prompt = caption_prompt
        self.image_root = image_root
        self.checkpoint = checkpoint

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        *,
        labels: str | Path | None = None,
        image_root: str | Path | None = None,
        device: str = "cpu",
        expert_settings: Mapping[str, Mapping[str, Any]] | None = None,
        precision: str = "fp32",
    ) -> "Predictor":
        """Load a checkpoint folder (or a run folder: its latest checkpoint).

        ``labels``: a label store to read expert maps from instead of running the experts;
        image paths are then looked up by their path relative to ``image_root`` (the folder
        that was labelled), or by file name. ``expert_settings``: settings of experts run on
        the fly, e.g. ``{"edge": {"low": 50}}``. ``precision``: ``fp32``, or ``bf16`` for
        weights and activations in bfloat16: on CPUs with bf16 instructions decoding then moves
        half the bytes and takes faster kernels (base captions 2.5x faster at 2 threads, see
        docs/benchmarks.md); scores differ from fp32 in the second or third digit.
        """
        if precision not in PRECISIONS:
            raise PrismerError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        from ..experts.runner import ExpertRunner

        info = read_checkpoint_info(resolve_checkpoint(checkpoint))
        specs = _require_checkpoint_experts(info, live=labels is None, settings=expert_settings)
        model = load_checkpoint(info.directory, experts=specs, device=device).to(PRECISIONS[precision])
        if not specs:
            source = None
        elif labels is None:
            source = ExpertRunner(list(specs), device=device, settings=expert_settings)
        else:
            from ..data.dataset import StoredLabels

            source = StoredLabels(labels, specs)
        builder = BatchBuilder(model.image_size, model.image_mean, model.image_std, specs, source, _label_encoder(info))
        prompt = str((info.extra.get("training") or {}).get("caption_prompt") or "")
        return cls(model, builder, prompt, image_root, info.directory)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def experts(self) -> list[str]:
        return list(self.model.expert_specs)

    # -- tasks -------------------------------------------------------------------------------
    def caption(
        self,
        images: ImageLike | Sequence[ImageLike],
        prompt: str | None = None,
        *,
        num_beams: int = 3,
        max_new_tokens: int = 20,
        min_length: int = 0,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[str]:
        """One caption per image: the text written after ``prompt`` (default: the prompt the
        model was trained with), by beam search with the decoder's key/value cache."""
        prompt = self.caption_prompt if prompt is None else prompt
        captions: list[str] = []
        for chunk, batch in self._batches(as_inputs(images, self.image_root), batch_size, progress):
            captions += self.model.generate(batch, prompt, num_beams=num_beams, max_new_tokens=max_new_tokens, min_length=min_length)
        return captions

    def answer(
        self,
        images: ImageLike | Sequence[ImageLike],
        questions: str | Sequence[str],
        *,
        num_beams: int = 3,
        max_new_tokens: int = 10,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[str]:
        """Open-ended answers: generated after the training prompt of each question."""
        inputs, prompts = self._questions(images, questions)
        answers: list[str] = []
        for chunk, batch in self._batches(inputs, batch_size, progress):
            answers += self.model.generate(batch, [prompts[i] for i in chunk], num_beams=num_beams, max_new_tokens=max_new_tokens)
        return answers

    def rank(
        self,
        images: ImageLike | Sequence[ImageLike],
        questions: str | Sequence[str],
        candidates: Sequence[str],
        *,
        prefilter_k: int | None = None,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[Ranking]:
        """Closed-set answers: the candidates ranked by log-likelihood after each question.

        With ``prefilter_k`` only the k candidates whose first token is most likely are scored
        in full (the paper's prefilter for long answer lists); the others are left out of
        the ranking.
        """
        inputs, prompts = self._questions(images, questions)
        candidates = _unique_texts(candidates, "candidate answer")
        return [
            Ranking(candidates[order[0]], tuple(candidates[i] for i in order), tuple(scores))
            for order, scores in self._rank(inputs, prompts, candidates, prefilter_k, batch_size, progress)
        ]

    def classify(
        self,
        images: ImageLike | Sequence[ImageLike],
        class_names: Sequence[str],
        template: str = DEFAULT_TEMPLATE,
        *,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[Ranking]:
        """Classification by ranking: each class's sentence (``template`` with the class name)
        is scored as a caption; the answer is the class whose sentence is most likely."""
        if template.count("{}") != 1:
            raise PrismerError(f"the class template must contain one '{{}}' for the class name, got {template!r}")
        names = _unique_texts(class_names, "class name")
        sentences = [template.format(name) for name in names]
        inputs = as_inputs(images, self.image_root)
        prompts = [self.caption_prompt] * len(inputs)
        return [
            Ranking(names[order[0]], tuple(names[i] for i in order), tuple(scores))
            for order, scores in self._rank(inputs, prompts, sentences, None, batch_size, progress)
        ]

    # -- helpers -----------------------------------------------------------------------------
    def _questions(self, images: ImageLike | Sequence[ImageLike], questions: str | Sequence[str]) -> tuple[list[ImageInput], list[str]]:
        inputs = as_inputs(images, self.image_root)
        questions = [questions] * len(inputs) if isinstance(questions, str) else list(questions)
        if len(questions) != len(inputs):
            raise PrismerError(f"got {len(questions)} questions for {len(inputs)} images")
        return inputs, [task_prompt("vqa", question=q.strip()) for q in questions]

    def _batches(self, inputs: list[ImageInput], batch_size: int, progress: Progress | None) -> Iterator[tuple[range, dict]]:
        if batch_size < 1:
            raise PrismerError("batch size must be at least 1")
        for start in range(0, len(inputs), batch_size):
            chunk = range(start, min(start + batch_size, len(inputs)))
            yield chunk, self.builder([inputs[i] for i in chunk], self.device, self.dtype)
            if progress is not None:
                progress(len(chunk))

    @torch.no_grad()
    def _rank(
        self, inputs: list[ImageInput], prompts: list[str], candidates: list[str],
        prefilter_k: int | None, batch_size: int, progress: Progress | None,
    ) -> list[tuple[list[int], list[float]]]:
        """Per image: candidate indices best first, and their scores."""
        if prefilter_k is not None and prefilter_k < 1:
            raise PrismerError(f"the prefilter keeps at least one candidate, got k={prefilter_k}")
        first_tokens = self._first_tokens(candidates) if prefilter_k is not None else None
        results = []
        for chunk, batch in self._batches(inputs, batch_size, progress):
            chunk_prompts = [prompts[i] for i in chunk]
            if first_tokens is None:
                for row in self.model.score(batch, chunk_prompts, candidates):
                    results.append(_best_first(list(range(len(candidates))), row))
                continue
            first = self._first_token_log_probs(batch, chunk_prompts)[:, first_tokens]  # [b, C]
            for b, prompt in enumerate(chunk_prompts):
                keep = torch.sort(first[b], descending=True, stable=True).indices[:prefilter_k].tolist()
                single = _select(batch, b)
                scores = self.model.score(single, prompt, [candidates[i] for i in keep])[0]
                results.append(_best_first(keep, scores))
        return results

    def _first_tokens(self, candidates: list[str]) -> torch.Tensor:
        """The first token of each candidate, tokenised exactly as ``model.score`` does."""
        ids, _ = self.model._candidate_ids(candidates, self.device)
        return ids[:, 0]

    def _first_token_log_probs(self, batch: dict, prompts: list[str]) -> torch.Tensor:
        """log p(next token | image, prompt) [B, V] at the end of each (left-padded) prompt."""
        ids, valid = self.model._prompt_ids(prompts, len(prompts))
        logits = self.model(batch, ids, valid).logits[:, -1]
        return F.log_softmax(logits.float(), dim=-1)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or the latest complete checkpoint of a run folder."""
    path = Path(path)
    if (path / "prismer.json").is_file() or not (path / "checkpoints").is_dir():
        return path  # read_checkpoint_info says what is wrong with a non-checkpoint
    from ..train.run_dir import RunDir

    latest = RunDir(path).latest()
    if latest is None:
        raise CheckpointError(f"run folder {path} has no finished checkpoint yet (no checkpoints/latest.json)")
    return latest[1]


def _require_checkpoint_experts(info: CheckpointInfo, live: bool, settings: Mapping[str, Mapping[str, Any]] | None) -> dict:
    """The installed specs of the checkpoint's experts; if one is missing or not ready, say
    which and what to do (the registry's reasons), before loading any weights."""
    from ..registry import UnknownExpertError
    from ..train.experts import require_experts

    names = list(info.experts)
    if not names:
        return {}
    trained = ", ".join(f"{n} {e.version}" for n, e in info.experts.items())
    try:
        return require_experts(names, live=live, settings=settings)
    except UnknownExpertError as exc:
        raise CheckpointError(
            f"checkpoint {info.directory} was trained with the experts {trained}, but '{exc.name}' is not installed: "
            f"install the plugin package that provides it (then check `prismer experts list`); {exc}"
        ) from None
    except PrismerError as exc:
        raise CheckpointError(f"checkpoint {info.directory} was trained with the experts {trained}; {exc}") from None


def _label_encoder(info: CheckpointInfo):
    """The checkpoint's own label encoder (never a new fit), or None without semantic experts."""
    semantic = [name for name, spec in info.experts.items() if spec.is_semantic]
    if not semantic:
        return None
    from ..semantic import LabelEncoder

    path = info.label_encoder_file
    if path is None or not path.is_file():
        raise CheckpointError(
            f"checkpoint {info.directory} uses semantic experts ({', '.join(semantic)}) but holds no label encoder file; "
            "its semantic maps cannot be reproduced"
        )
    encoder = LabelEncoder.load(path)
    if info.label_encoder and encoder.identity != info.label_encoder:
        raise CheckpointError(
            f"checkpoint {info.directory}: label encoder file {path.name} is {encoder.identity}, "
            f"but the checkpoint records {info.label_encoder}"
        )
    return encoder


def _unique_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise PrismerError(f"expected a list of {what}s, got one string {texts!r}")
    cleaned = [str(t).strip() for t in texts]
    if not cleaned:
        raise PrismerError(f"no {what}s given")
    if "" in cleaned:
        raise PrismerError(f"{what} {cleaned.index('') + 1} is empty")
    seen: set[str] = set()
    repeated = [t for t in cleaned if t in seen or seen.add(t)]
    if repeated:
        raise PrismerError(f"{what}s must be distinct; repeated: {', '.join(repr(t) for t in dict.fromkeys(repeated))}")
    return cleaned


def _best_first(indices: list[int], scores: torch.Tensor) -> tuple[list[int], list[float]]:
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    return [indices[i] for i in order], [float(scores[i]) for i in order]


def _select(batch: dict, row: int) -> dict:
    """One image's part of a batch, keeping the batch dimension."""
    pick = slice(row, row + 1)
    return {
        "rgb": batch["rgb"][pick],
        "experts": {n: t[pick] for n, t in batch["experts"].items()},
        "instances": {n: t[pick] for n, t in batch["instances"].items()},
    }
