"""The Python API of a trained model: captions, open-ended answers, answer ranking, classification.

    from prismer_core.inference import Predictor
    predictor = Predictor.from_checkpoint("runs/demo-edge-ocr")      # a run folder or a checkpoint
    predictor.caption(["a.png", pil_image])                           # ['two shapes: ...', ...]
    predictor.answer(["a.png"], ["what colour is the star?"])         # ['red']
    predictor.rank(["a.png"], ["what colour is the star?"], ["red", "blue"], prefilter_k=128)[0].answer
    predictor.classify(["a.png"], ["circle", "star"])[0].answer      # "A photo of a {}." ranked

The checkpoint's experts run on the fly, or their maps are read from the label store the
model was trained with (``labels=``). An expert that is not installed or not ready here stops
the load (``missing_experts="refuse"``), or, with ``missing_experts="drop"``, the model runs
without it (``predictor.dropped_experts`` says which and why); images become model inputs through training's own
:class:`~prismer_core.data.encoding.SampleEncoder`, and prompts go through the same
:class:`~prismer_core.text.TextCodec` (the run's caption prompt, the VQA template).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, CheckpointInfo, read_checkpoint_info, resolve_checkpoint
from ..data.encoding import SampleEncoder
from ..data.images import ImageRef
from ..data.labels import LabelSource, LiveLabels, StoredLabels
from ..data.transforms import PairedTransform
from ..errors import PrismerError
from ..inputs import ModelInputs
from ..model import Prismer
from ..registry import UnknownExpertError, get_registry
from ..semantic import LabelEncoder
from ..text import TextCodec, TokenRows, task_prompt
from .availability import checkpoint_experts
from .inputs import ImageLike, as_inputs

#: Inference precisions, by the name users pass (`prismer caption --precision`).
INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: What to do with a checkpoint's expert that cannot run here (`--missing-experts`).
MISSING_EXPERTS = ("refuse", "drop")

Progress = Callable[[int], None]
DEFAULT_TEMPLATE = "A photo of a {}."


@dataclass(frozen=True)
class Ranking:
    """Candidates of one image, best first, with their log-likelihoods (summed over tokens)."""

    answer: str
    candidates: tuple[str, ...]
    scores: tuple[float, ...]


class Predictor:
    """A model with its experts, sample encoder, text codec and prompts; build with :meth:`from_checkpoint`."""

    def __init__(
        self,
        model: Prismer,
        encoder: SampleEncoder,
        labels: LabelSource | None = None,
        caption_prompt: str = "",
        checkpoint: Path | None = None,
        codec: TextCodec | None = None,
        dropped_experts: Mapping[str, str] | None = None,
    ) -> None:
        """``dropped_experts``: the model's experts that have no maps here, with why (they are
        masked out of every input); every other expert of the model needs a source in ``labels``."""
        self.dropped_experts = dict(dropped_experts or {})
        unknown = sorted(set(self.dropped_experts) - set(model.expert_specs))
        if unknown:
            raise PrismerError(f"cannot drop {', '.join(unknown)}: not experts of the model ({', '.join(model.expert_specs) or 'none'})")
        if len(self.dropped_experts) < len(encoder.experts) and labels is None:
            raise PrismerError("the model uses experts but no source of their maps was given")
        self.model = model.eval()
        self.encoder = encoder
        self.labels = labels
        self.caption_prompt = caption_prompt
        self.checkpoint = checkpoint
        self.codec = codec or TextCodec.for_decoder(model.spec.decoder)

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
        missing_experts: str = "refuse",
    ) -> "Predictor":
        """Load a checkpoint folder (or a run folder: its latest checkpoint, or a Hugging Face
        Hub id such as ``user/prismer-demo``, from the hub's cache or downloaded).

        ``labels``: a label store to read expert maps from instead of running the experts;
        images are found in it by their content, whatever their path (``image_root`` is no
        longer needed and is ignored). ``expert_settings``: settings of experts run on the fly,
        e.g. ``{"edge": {"low": 50}}``. ``precision``: ``fp32``, or ``bf16`` for weights and
        activations in bfloat16: on CPUs with bf16 instructions decoding then moves half the
        bytes and takes faster kernels (base captions 2.5x faster at 2 threads, see
        docs/benchmarks.md); scores differ from fp32 in the second or third digit.
        ``missing_experts``: ``refuse`` (an expert of the checkpoint that is not installed or
        not ready here is an error saying what to install), or ``drop`` (run with the experts
        that can run; the others are masked out of the model's input, as expert dropout in
        training does, and listed in :attr:`dropped_experts`).
        """
        if precision not in INFERENCE_DTYPES:
            raise PrismerError(f"precision {precision!r}: choose one of {', '.join(INFERENCE_DTYPES)}")
        if missing_experts not in MISSING_EXPERTS:
            raise PrismerError(f"missing experts {missing_experts!r}: choose one of {', '.join(MISSING_EXPERTS)}")
        if image_root is not None:
            warnings.warn("Predictor.from_checkpoint(image_root=...) is ignored: label stores find images by content",
                          DeprecationWarning, stacklevel=2)
        info = read_checkpoint_info(resolve_checkpoint(checkpoint))
        live = labels is None
        if missing_experts == "refuse":
            specs, dropped = _require_checkpoint_experts(info, live=live, settings=expert_settings), {}
        else:
            specs, dropped = _available_checkpoint_experts(info, live, expert_settings, labels)
        model_specs = {name: specs.get(name, spec) for name, spec in info.experts.items()}  # recorded specs for dropped ones
        model = Prismer.from_pretrained(info.directory, experts=model_specs, device=device).to(INFERENCE_DTYPES[precision])
        if not specs:
            source = None
        elif labels is None:
            source = LiveLabels(list(specs), device=device, settings=expert_settings)
        else:
            source = StoredLabels(labels, specs)
        encoder = SampleEncoder(PairedTransform(model.image_size, train=False), model.image_mean, model.image_std,
                                model.expert_specs, _label_encoder(info))
        prompt = str((info.extra.get("training") or {}).get("caption_prompt") or "")
        return cls(model, encoder, source, prompt, info.directory, dropped_experts=dropped)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def experts(self) -> list[str]:
        """The experts the model was trained with (see :attr:`experts_used` for those that run)."""
        return list(self.model.expert_specs)

    @property
    def experts_used(self) -> list[str]:
        """The experts whose maps the model reads here: its own, less the dropped ones."""
        return [name for name in self.model.expert_specs if name not in self.dropped_experts]

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
        refs = as_inputs(images)
        prompts = [self.caption_prompt if prompt is None else prompt] * len(refs)
        return self._write(refs, prompts, batch_size, progress, num_beams=num_beams, max_new_tokens=max_new_tokens,
                           min_length=min_length)

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
        refs, prompts = self._questions(images, questions)
        return self._write(refs, prompts, batch_size, progress, num_beams=num_beams, max_new_tokens=max_new_tokens)

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
        refs, prompts = self._questions(images, questions)
        candidates = _unique_texts(candidates, "candidate answer")
        return [
            Ranking(candidates[order[0]], tuple(candidates[i] for i in order), tuple(scores))
            for order, scores in self._rank(refs, prompts, candidates, prefilter_k, batch_size, progress)
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
        refs = as_inputs(images)
        prompts = [self.caption_prompt] * len(refs)
        return [
            Ranking(names[order[0]], tuple(names[i] for i in order), tuple(scores))
            for order, scores in self._rank(refs, prompts, sentences, None, batch_size, progress)
        ]

    def inputs(self, images: ImageLike | Sequence[ImageLike]) -> ModelInputs:
        """The model input of ``images`` on the model's device and precision: their expert maps
        (run or read), then training's eval-mode encoding."""
        refs = as_inputs(images)
        loaded = [ref.load() for ref in refs]
        maps = self.labels(loaded) if self.labels is not None else [{} for _ in loaded]  # dropped experts: none
        parts = [self.encoder(image.pixels, outputs)[0] for image, outputs in zip(loaded, maps)]
        return ModelInputs.concat(parts).to(self.device, self.dtype)

    # -- helpers -----------------------------------------------------------------------------
    def _write(self, refs: list[ImageRef], prompts: list[str], batch_size: int, progress: Progress | None, **options: Any) -> list[str]:
        """The text the model writes after each image's prompt (``options``: those of ``generate``)."""
        texts: list[str] = []
        for chunk, inputs in self._batches(refs, batch_size, progress):
            rows = self.codec.prompt_batch([prompts[i] for i in chunk])
            texts += self.codec.decode(self.model.generate(inputs, rows, end_token_id=self.codec.end_id, **options))
        return texts

    def _questions(self, images: ImageLike | Sequence[ImageLike], questions: str | Sequence[str]) -> tuple[list[ImageRef], list[str]]:
        refs = as_inputs(images)
        questions = [questions] * len(refs) if isinstance(questions, str) else list(questions)
        if len(questions) != len(refs):
            raise PrismerError(f"got {len(questions)} questions for {len(refs)} images")
        return refs, [task_prompt("vqa", question=q) for q in questions]

    def _batches(self, refs: list[ImageRef], batch_size: int, progress: Progress | None) -> Iterator[tuple[range, ModelInputs]]:
        if batch_size < 1:
            raise PrismerError("batch size must be at least 1")
        for start in range(0, len(refs), batch_size):
            chunk = range(start, min(start + batch_size, len(refs)))
            yield chunk, self.inputs([refs[i] for i in chunk])
            if progress is not None:
                progress(len(chunk))

    @torch.no_grad()
    def _rank(
        self, refs: list[ImageRef], prompts: list[str], candidates: list[str],
        prefilter_k: int | None, batch_size: int, progress: Progress | None,
    ) -> list[tuple[list[int], list[float]]]:
        """Per image: candidate indices best first, and their scores."""
        if prefilter_k is not None and prefilter_k < 1:
            raise PrismerError(f"the prefilter keeps at least one candidate, got k={prefilter_k}")
        rows = self.codec.candidate_batch(prompts, candidates)
        results = []
        for chunk, inputs in self._batches(refs, batch_size, progress):
            chunk_prompts = self.codec.prompt_batch([prompts[i] for i in chunk])
            if prefilter_k is None:
                for row in self.model.score(inputs, chunk_prompts, rows):
                    results.append(_best_first(list(range(len(candidates))), row))
                continue
            first = self._first_token_log_probs(inputs, chunk_prompts)
            first = first[:, rows.ids[:, 0].to(first.device)]  # [b, C]
            for b in range(len(chunk)):
                keep = torch.sort(first[b], descending=True, stable=True).indices[:prefilter_k].cpu()
                one_prompt = TokenRows(chunk_prompts.ids[b : b + 1], chunk_prompts.valid[b : b + 1])
                kept = TokenRows(rows.ids[keep], rows.valid[keep])
                scores = self.model.score(inputs.select(b), one_prompt, kept)[0]
                results.append(_best_first(keep.tolist(), scores))
        return results

    def _first_token_log_probs(self, inputs: ModelInputs, prompts: TokenRows) -> torch.Tensor:
        """log p(next token | image, prompt) [B, V] at the end of each (left-padded) prompt."""
        prompts = prompts.to(self.device)
        logits = self.model(inputs, prompts.ids, prompts.valid).logits[:, -1]
        return F.log_softmax(logits.float(), dim=-1)


def _available_checkpoint_experts(
    info: CheckpointInfo, live: bool, settings: Mapping[str, Mapping[str, Any]] | None, labels: str | Path | None,
) -> tuple[dict, dict[str, str]]:
    """The installed specs of the checkpoint's experts that can run here, and why each other one cannot."""
    found = checkpoint_experts(info, labels=None if live else labels, settings=settings)
    usable = [expert.name for expert in found if expert.usable]
    specs = get_registry().require(usable, live=live, settings=settings) if usable else {}
    return specs, {expert.name: expert.reason for expert in found if not expert.usable}


def _require_checkpoint_experts(info: CheckpointInfo, live: bool, settings: Mapping[str, Mapping[str, Any]] | None) -> dict:
    """The installed specs of the checkpoint's experts; if one is missing or not ready, say
    which and what to do (the registry's reasons), before loading any weights."""
    names = list(info.experts)
    if not names:
        return {}
    trained = ", ".join(f"{n} {e.version}" for n, e in info.experts.items())
    try:
        return get_registry().require(names, live=live, settings=settings)
    except UnknownExpertError as exc:
        raise CheckpointError(
            f"checkpoint {info.directory} was trained with the experts {trained}, but '{exc.name}' is not installed: "
            f"install the plugin package that provides it (then check `prismer experts list`; `prismer experts check` "
            f"names the package), or pass --missing-experts drop to run without it; {exc}"
        ) from None
    except PrismerError as exc:
        raise CheckpointError(f"checkpoint {info.directory} was trained with the experts {trained}; {exc} "
                              "(or pass --missing-experts drop to run without it)") from None


def _label_encoder(info: CheckpointInfo):
    """The checkpoint's own label encoder (never a new fit), or None without semantic experts."""
    semantic = [name for name, spec in info.experts.items() if spec.is_semantic]
    if not semantic:
        return None
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
