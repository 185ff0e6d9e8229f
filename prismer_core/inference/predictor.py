"""The Python API of a trained model: captions, open-ended answers, answer ranking, classification.

    from prismer_core.inference import Predictor
    predictor = Predictor.from_checkpoint("runs/demo-edge-ocr")      # a run folder or a checkpoint
    predictor.caption(["a.png", pil_image])                           # ['two shapes: ...', ...]
    predictor.answer(["a.png"], ["what colour is the star?"])         # ['red']
    predictor.rank(["a.png"], ["what colour is the star?"], ["red", "blue"], prefilter_k=128)[0].answer
    predictor.classify(["a.png"], ["circle", "star"])[0].answer      # "A photo of a {}." ranked

With the contrastive pass (a model trained with it, MaMMUT's second pass):

    predictor.embed_images(["a.png"]), predictor.embed_texts(["a red circle"])   # unit vectors
    predictor.retrieve(texts=["a red circle"], images=folder_images, k=5)[0]     # best images first
    predictor.retrieve(texts=captions, images=["a.png"], query="images")[0]      # best texts first
    predictor.classify(["a.png"], ["circle", "star"], by="similarity")           # zero-shot

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
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, CheckpointInfo, read_checkpoint_info, resolve_checkpoint, weights_sha256
from ..data.encoding import SampleEncoder
from ..data.images import ImageRef
from ..data.labels import LabelSource, LiveLabels, StoredLabels
from ..data.transforms import PairedTransform
from ..errors import PrismerError
from ..inputs import ModelInputs
from ..model import Prismer, pack_for_inference
from ..registry import UnknownExpertError, get_registry
from ..semantic import LabelEncoder
from ..text import TextCodec, TokenRows, task_prompt
from .availability import checkpoint_experts
from .embeddings import ImageEmbeddingStore, Match, default_store_root, model_identity, nearest
from .inputs import ImageLike, as_inputs

#: Inference precisions, by the name users pass (`prismer caption --precision`).
INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: What to do with a checkpoint's expert that cannot run here (`--missing-experts`).
MISSING_EXPERTS = ("refuse", "drop")

Progress = Callable[[int], None]
DEFAULT_TEMPLATE = "A photo of a {}."
#: How ``classify`` ranks the classes: by likelihood as a caption, or by embedding similarity.
CLASSIFY_BY = ("likelihood", "similarity")


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
        max_text_length: int = 64,
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
        #: Tokens of a text the contrastive pass reads (training's --max-text-length).
        self.max_text_length = max_text_length

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
        pack_for_inference(model)  # oneDNN-packed weights on a CPU: decoding about 2x faster (model/packed.py)
        if not specs:
            source = None
        elif labels is None:
            source = LiveLabels(list(specs), device=device, settings=expert_settings)
        else:
            source = StoredLabels(labels, specs)
        encoder = SampleEncoder(PairedTransform(model.image_size, train=False), model.image_mean, model.image_std,
                                model.expert_specs, _label_encoder(info))
        training = info.extra.get("training") or {}
        prompt = str(training.get("caption_prompt") or "")
        return cls(model, encoder, source, prompt, info.directory, dropped_experts=dropped,
                   max_text_length=int(training.get("max_text_length") or 64))

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
        by: Literal["likelihood", "similarity"] = "likelihood",
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[Ranking]:
        """Classification: each class's sentence (``template`` with the class name) is scored
        as a caption (``by="likelihood"``: its log-likelihood), or compared with the image in
        the contrastive embedding space (``by="similarity"``: zero-shot, cosine similarity,
        needs a model trained with the contrastive pass); the answer is the best class."""
        if template.count("{}") != 1:
            raise PrismerError(f"the class template must contain one '{{}}' for the class name, got {template!r}")
        if by not in CLASSIFY_BY:
            raise PrismerError(f"classify by {by!r}: choose one of {', '.join(CLASSIFY_BY)}")
        names = _unique_texts(class_names, "class name")
        sentences = [template.format(name) for name in names]
        refs = as_inputs(images)
        if by == "similarity":
            similarity = self.embed_images(refs, batch_size=batch_size, progress=progress) @ self.embed_texts(sentences).T
            return [Ranking(names[order[0]], tuple(names[i] for i in order), tuple(scores))
                    for order, scores in (_best_first(list(range(len(names))), row) for row in similarity)]
        prompts = [self.caption_prompt] * len(refs)
        return [
            Ranking(names[order[0]], tuple(names[i] for i in order), tuple(scores))
            for order, scores in self._rank(refs, prompts, sentences, None, batch_size, progress)
        ]

    # -- the contrastive pass: embeddings and retrieval ------------------------------------------
    def embed_images(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        batch_size: int = 8,
        progress: Progress | None = None,
        store: ImageEmbeddingStore | str | Path | bool | None = None,
    ) -> torch.Tensor:
        """Unit-length embeddings [N, dim] (float32, on the CPU) of images, by the contrastive
        pass's image side (needs a model trained with it).

        ``store``: keep them on disk (:mod:`prismer_core.inference.embeddings`), so images
        this model embedded before are read back instead of computed: True for the default
        place (``$PRISMER_HOME/image-embeddings``), a folder, or an opened store. ``progress``
        is told of the images actually embedded.
        """
        self.model.contrastive_heads  # noqa: B018 - a model without the pass says so before any work
        refs = as_inputs(images)
        store = self.embedding_store(None if store is True else store) if store not in (None, False) else None
        keys = [ref.content_key() for ref in refs] if store is not None else [None] * len(refs)
        found = store.get([k for k in keys if k is not None]) if store is not None else {}
        todo = [i for i, key in enumerate(keys) if key is None or key not in found]
        vectors: dict[int, torch.Tensor] = {i: found[key] for i, key in enumerate(keys) if key in found}
        fresh: dict[str, torch.Tensor] = {}
        for chunk, inputs in self._batches([refs[i] for i in todo], batch_size, progress):
            for i, vector in zip(chunk, self.model.embed_images(inputs).cpu()):
                vectors[todo[i]] = vector
                if keys[todo[i]] is not None:
                    fresh[keys[todo[i]]] = vector
        if store is not None:
            store.put(fresh)
        dim = self.model.spec.contrastive.dim
        return torch.stack([vectors[i] for i in range(len(refs))]) if refs else torch.zeros((0, dim))

    def embed_texts(self, texts: str | Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        """Unit-length embeddings [N, dim] (float32, on the CPU) of texts, by the contrastive
        pass's bidirectional text side (``[BEGIN] text [END]``, as in training)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if any(not str(t).strip() for t in texts):
            raise PrismerError("cannot embed an empty text")
        self.model.contrastive_heads  # noqa: B018
        if batch_size < 1:
            raise PrismerError("batch size must be at least 1")
        parts = [self.model.embed_texts(self.codec.text_batch(texts[i : i + batch_size], self.max_text_length)).cpu()
                 for i in range(0, len(texts), batch_size)]
        return torch.cat(parts) if parts else torch.zeros((0, self.model.spec.contrastive.dim))

    def retrieve(
        self,
        texts: str | Sequence[str],
        images: ImageLike | Sequence[ImageLike],
        *,
        query: Literal["texts", "images"] = "texts",
        k: int = 5,
        batch_size: int = 8,
        progress: Progress | None = None,
        store: ImageEmbeddingStore | str | Path | bool | None = None,
    ) -> list[list[Match]]:
        """Rank by cosine similarity of the contrastive embeddings: for each text, the ``k``
        best images (``query="texts"``), or for each image the ``k`` best texts
        (``query="images"``), best first. Matches name images by their file name (``where``
        for other inputs) and texts by themselves. ``store``: as for :meth:`embed_images`."""
        if query not in ("texts", "images"):
            raise PrismerError(f"query must be 'texts' or 'images', got {query!r}")
        if k < 1:
            raise PrismerError(f"k must be at least 1, got {k}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        refs = as_inputs(images)
        if not texts or not refs:
            raise PrismerError("retrieval needs at least one text and one image")
        text_vectors = self.embed_texts(texts)
        image_vectors = self.embed_images(refs, batch_size=batch_size, progress=progress, store=store)
        if query == "texts":
            queries, gallery, names = text_vectors, image_vectors, [ref.name or ref.label for ref in refs]
        else:
            queries, gallery, names = image_vectors, text_vectors, texts
        scores, indices = nearest(queries, gallery, k)
        return [[Match(int(i), names[int(i)], float(s)) for s, i in zip(row_scores, row_indices)]
                for row_scores, row_indices in zip(scores, indices)]

    def embedding_store(self, root: str | Path | ImageEmbeddingStore | None = None) -> ImageEmbeddingStore:
        """The store of this model's image embeddings under ``root`` (default:
        ``$PRISMER_HOME/image-embeddings``), keyed by :func:`~.embeddings.model_identity`."""
        if isinstance(root, ImageEmbeddingStore):
            return root
        if self.checkpoint is None:
            raise PrismerError("image embeddings are stored per checkpoint; this predictor was not loaded from one")
        experts = {name: {"version": spec.version, "settings": self.labels.settings_of(name) if self.labels else None}
                   for name, spec in self.model.expert_specs.items()}
        identity = model_identity(weights_sha256(self.checkpoint), self.model.spec.to_dict(), experts,
                                  str(self.dtype).removeprefix("torch."))
        return ImageEmbeddingStore(root if root is not None else default_store_root(), identity)

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
