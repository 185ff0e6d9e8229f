"""Text in and out of the model: task prompts, targets, candidates, the end token, padding.

The one place where text becomes token ids and ids become text. Training's collator, the
predictor's generation and ranking, and evaluation all go through a :class:`TextCodec`, so
the prompt training teaches is the prompt inference sends, token for token
(tests/test_text.py checks it). The network itself only sees ids.

The cross-attention decoder (BERT and RoBERTa vocabularies) reads ``[BOS] prompt target
[EOS]`` and learns ``target [EOS]``. Its contrastive pass (MaMMUT) reads a description alone,
``[BOS] text [EOS]`` (:meth:`TextCodec.text_batch`, :meth:`TextCodec.paired_batch`), in
training and when texts are embedded for retrieval alike. A decoder of another kind (a decoder-only LM with a chat
template) brings its own codec: a subclass that overrides :meth:`TextCodec.prompt_text`
(the template around a prompt), :meth:`TextCodec.prompt_tokens` (whether a begin token
comes first) and the special ids, registered in :data:`CODECS` under its decoder kind.
:class:`CausalLMCodec` is the one of ``causal_lm`` decoders: the chat template for instruct
models that have one (the prompt is the user's turn, the target the assistant's), the plain
``[BOS] prompt target [EOS]`` otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import PrismerError
from .lm_source import load_error, resolve_lm
from .specs import CausalLMSpec, DecoderSpec, resolve_source, source_error

if TYPE_CHECKING:
    import torch

#: Label of positions the loss ignores (prompt and padding), as in transformers.
IGNORE_INDEX = -100
VQA_TEMPLATE = "question: {question} answer:"
#: What a model can be trained on (evaluation adds ``classify``, scored by ranking captions).
TRAIN_TASKS = ("caption", "vqa")


def task_prompt(task: str, question: str = "", caption_prompt: str = "") -> str:
    """The text the model is given: ``caption_prompt`` for captions, the question for VQA."""
    if task == "caption":
        return caption_prompt
    if task == "vqa":
        return VQA_TEMPLATE.format(question=question.strip())
    raise PrismerError(f"unknown task {task!r}")


@dataclass(frozen=True)
class TokenRows:
    """Token ids [B, T] and which of them are real (the rest is padding)."""

    ids: torch.Tensor
    valid: torch.Tensor

    def to(self, device: torch.device | str) -> "TokenRows":
        return TokenRows(self.ids.to(device), self.valid.to(device))

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class TrainingText:
    """A batch of ``prompt target [END]`` rows, right-padded; ``labels`` line up with
    ``input_ids`` (HF convention, the model shifts them) and are -100 on prompt and padding."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class PairedText:
    """The contrastive pass's texts of a training batch: one per batch row that has a
    description of its image (a caption), ``[BEGIN] text [END]`` right-padded.

    ``rows`` [N]: the batch row each text describes; ``text_keys`` [N]: equal for equal
    strings; ``image_keys`` [B], one per batch row (not only the described ones): equal for
    rows showing the same image. Rows that share an image or a text are not negatives of each
    other (:mod:`prismer_core.model.contrastive`).
    """

    ids: torch.Tensor
    valid: torch.Tensor
    rows: torch.Tensor
    text_keys: torch.Tensor
    image_keys: torch.Tensor

    def to(self, device: torch.device | str) -> "PairedText":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PairedText(move(self.ids), move(self.valid), move(self.rows), move(self.text_keys), move(self.image_keys))


def stable_key(text: str) -> int:
    """A non-negative 63-bit number for a string, the same in every process and every run."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


class TextCodec:
    """Tokenises prompts, targets and candidates for one decoder, and decodes what it writes."""

    #: The decoder kind this codec serves (see :data:`CODECS`).
    kind: ClassVar[str] = "cross_attention"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        begin = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if begin is None or end is None:
            raise PrismerError(f"tokenizer {type(tokenizer).__name__} has no begin/end-of-sequence tokens")
        #: RoBERTa's <s> </s> <pad>, or BERT's [CLS] [SEP] [PAD] (the end token pads without a pad token).
        self.begin_id: int = begin
        self.end_id: int = end
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end

    @classmethod
    def for_decoder(cls, spec: DecoderSpec | CausalLMSpec) -> "TextCodec":
        """The codec of a decoder spec, with the tokenizer it names (checked against its shapes)."""
        codec = CODECS.get(getattr(spec, "kind", cls.kind))
        if codec is None:
            raise PrismerError(f"no text codec for decoder kind {getattr(spec, 'kind', '?')!r} (known: {', '.join(CODECS)})")
        return codec.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: Any) -> "TextCodec":
        return cls(load_tokenizer(spec))

    # -- the pieces of a row ---------------------------------------------------------------
    def tokens(self, text: str) -> list[int]:
        """``text`` as ids, no special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def prompt_text(self, prompt: str) -> str:
        """The text a prompt becomes (a chat template would wrap it here)."""
        return prompt

    def prompt_tokens(self, prompt: str) -> list[int]:
        """``[BEGIN] prompt``: what the model continues, in training and in inference."""
        return [self.begin_id, *self.tokens(self.prompt_text(prompt))]

    def continuation_tokens(self, prompt: str, target: str) -> list[int]:
        """``target [END]`` as it follows ``prompt`` (a space between them when there is a prompt)."""
        return [*self.tokens(f" {target}" if prompt else target), self.end_id]

    def output_vocabulary(self, pairs: Iterable[tuple[str, str]]) -> list[int]:
        """The sorted ids of every target's tokens and the end token: all a decoder trained on
        these (prompt, target) pairs is ever shown to write (spec ``decoder.output_vocabulary``)."""
        ids = {self.end_id}
        for prompt, target in pairs:
            ids.update(self.continuation_tokens(prompt, target))
        return sorted(ids)

    # -- batches ---------------------------------------------------------------------------
    def training_batch(self, prompts: Sequence[str], targets: Sequence[str], max_length: int = 64) -> TrainingText:
        """Rows ``[BEGIN] prompt target [END]`` cut at ``max_length``, only the target learnt."""
        import torch  # light to import without it: the CLI reads TRAIN_TASKS and task_prompt

        rows: list[tuple[list[int], int]] = []
        for prompt, target in zip(prompts, targets, strict=True):
            head = self.prompt_tokens(prompt)
            if len(head) >= max_length:
                raise PrismerError(f"prompt {prompt!r} is {len(head)} tokens, not shorter than max length {max_length}")
            rows.append(((head + self.continuation_tokens(prompt, target))[:max_length], len(head)))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, prompt_length) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        return TrainingText(input_ids, attention_mask, labels)

    def prompt_batch(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> TokenRows:
        """Prompts as the model continues them, left-padded so that every row ends together."""
        return self._rows([self.prompt_tokens(p) for p in prompts], device, left=True)

    def candidate_batch(self, prompts: Sequence[str], candidates: Sequence[str], device: torch.device | str = "cpu") -> TokenRows:
        """Each candidate as the continuation training teaches after these prompts, right-padded."""
        spaced = {bool(p) for p in prompts}
        if len(spaced) > 1:
            raise PrismerError("candidates are scored after prompts that are all empty or all given, not a mix")
        prompt = "x" if spaced == {True} else ""
        return self._rows([self.continuation_tokens(prompt, c) for c in candidates], device, left=False)

    def text_batch(self, texts: Sequence[str], max_length: int = 64, device: torch.device | str = "cpu") -> TokenRows:
        """Texts as the contrastive pass reads them, ``[BEGIN] text [END]``, right-padded; a
        text cut at ``max_length`` keeps its end token (the end token's state is its embedding)."""
        if max_length < 2:
            raise PrismerError(f"max length must leave room for the begin and end tokens, got {max_length}")
        rows = [[self.begin_id, *self.tokens(t)[: max_length - 2], self.end_id] for t in texts]
        return self._rows(rows, device, left=False)

    def paired_batch(self, texts: Sequence[str | None], image_keys: Sequence[int], max_length: int = 64) -> PairedText:
        """The contrastive texts of a batch whose row ``i`` shows image ``image_keys[i]`` and is
        described by ``texts[i]`` (None: by nothing). A batch may have no text at all (then
        ``ids`` is [0, 1]): under torch.distributed its images still meet the other processes'
        texts, so every process runs the contrastive pass on every step."""
        import torch

        if len(texts) != len(image_keys):
            raise PrismerError(f"got {len(texts)} texts for {len(image_keys)} batch rows")
        described = [row for row, text in enumerate(texts) if text is not None]
        if described:
            tokens = self.text_batch([texts[row] for row in described], max_length)
        else:
            tokens = TokenRows(torch.zeros((0, 1), dtype=torch.long), torch.zeros((0, 1), dtype=torch.bool))
        return PairedText(
            tokens.ids, tokens.valid, torch.tensor(described, dtype=torch.long),
            torch.tensor([stable_key(texts[row]) for row in described], dtype=torch.long),
            torch.tensor(list(image_keys), dtype=torch.long),
        )

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Generated ids (end token excluded) as text."""
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _rows(self, rows: list[list[int]], device: torch.device | str, left: bool) -> TokenRows:
        import torch

        width = max(len(r) for r in rows)
        pads = [[self.pad_id] * (width - len(r)) for r in rows]
        ids = [pad + r if left else r + pad for r, pad in zip(rows, pads)]
        valid = [[False] * len(pad) + [True] * len(r) if left else [True] * len(r) + [False] * len(pad) for r, pad in zip(rows, pads)]
        return TokenRows(torch.tensor(ids, device=device), torch.tensor(valid, device=device))


class CausalLMCodec(TextCodec):
    """Text for a decoder-only LM: its chat template when it has one, else ``[BOS] prompt``."""

    kind: ClassVar[str] = "causal_lm"
    #: What an instruct model is asked when the prompt is empty (captions without a prompt).
    CAPTION_INSTRUCTION = "Describe the image."

    def __init__(self, tokenizer: Any, template: str = "auto", system: str | None = None) -> None:
        if tokenizer.eos_token_id is None:
            raise PrismerError(f"tokenizer {type(tokenizer).__name__} has no end-of-sequence token")
        self.tokenizer = tokenizer
        self.chat = template == "chat" or (template == "auto" and bool(getattr(tokenizer, "chat_template", None)))
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise PrismerError("decoder.template is 'chat' but the tokenizer has no chat template")
        self.system = system
        #: The end of the assistant's turn (SmolLM2's <|im_end|>), or the end of the text.
        self.end_id: int = tokenizer.eos_token_id
        self.begin_id: int = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.end_id
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id

    @classmethod
    def from_spec(cls, spec: CausalLMSpec) -> "CausalLMCodec":
        return cls(load_lm_tokenizer(spec), spec.template, spec.system)

    def prompt_text(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        messages = [{"role": "user", "content": prompt or self.CAPTION_INSTRUCTION}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The templated prompt (its own special tokens included), or ``[BEGIN] prompt``."""
        if self.chat:
            return self.tokens(self.prompt_text(prompt))
        return super().prompt_tokens(prompt)

    def continuation_tokens(self, prompt: str, target: str) -> list[int]:
        """In a chat, the assistant's turn: ``target [END]`` right after the template."""
        if self.chat:
            return [*self.tokens(target), self.end_id]
        return super().continuation_tokens(prompt, target)


#: Text codecs by decoder kind; a new decoder kind registers its own.
CODECS: dict[str, type[TextCodec]] = {TextCodec.kind: TextCodec, CausalLMCodec.kind: CausalLMCodec}


def load_tokenizer(spec: DecoderSpec) -> Any:
    """The tokenizer the spec names, checked against the decoder's vocabulary and padding id."""
    from transformers import AutoTokenizer

    source = resolve_source(spec.tokenizer)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise source_error("the tokenizer", source, exc) from None
    if len(tokenizer) > spec.vocab_size:
        raise PrismerError(f"tokenizer {source!r} has {len(tokenizer)} tokens but decoder.vocab_size is {spec.vocab_size}")
    if tokenizer.pad_token_id != spec.pad_token_id:
        raise PrismerError(f"tokenizer {source!r} pads with id {tokenizer.pad_token_id} but decoder.pad_token_id is {spec.pad_token_id}")
    return tokenizer


def load_lm_tokenizer(spec: CausalLMSpec) -> Any:
    """A causal LM's tokenizer: ``decoder.tokenizer``, else the one that comes with its weights
    (a GGUF file holds its tokenizer and chat template); loaded once per process."""
    source = spec.tokenizer or spec.weights
    assert source is not None  # the spec refuses neither
    tokenizer = _lm_tokenizer(source)
    vocab = spec.config.get("vocab_size")
    if vocab is not None and len(tokenizer) > vocab:
        raise PrismerError(f"tokenizer {source!r} has {len(tokenizer)} tokens but decoder.config.vocab_size is {vocab}")
    return tokenizer


@lru_cache(maxsize=4)
def _lm_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    files = resolve_lm(source, "the tokenizer")
    name, options = files.pretrained_args()
    try:
        return AutoTokenizer.from_pretrained(name, **options)
    except Exception as exc:
        raise load_error("the tokenizer", files, exc) from None
