"""Prismer: the vision encoder over RGB and experts, the language decoder, and what users call.

``build_model(spec, experts)`` makes one; ``model(batch, input_ids, attention_mask, labels)``
gives the caption loss; ``generate`` writes captions/answers (greedy or beam search, with a
key/value cache); ``score`` gives the log-likelihood of candidate answers; and
``parameter_report`` counts parameters per part. With no experts it is PrismerZ: RGB only,
no resampler.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrismerError
from ..experts.contract import ExpertSpec
from ..specs import PART_NAMES, DecoderSpec, ModelSpec, load_spec, resolve_source, source_error
from .decoder import DecoderCache, TextDecoder, load_pretrained_decoder
from .generation import beam_search, greedy_search
from .vision import VisionEncoder, load_vision_tower

#: Which part each parameter belongs to, by name; every parameter matches exactly one.
PART_PATTERNS: tuple[tuple[str, str], ...] = (
    ("vision.backbone", r"encoder\.blocks\."),
    ("vision.embeddings", r"encoder\.(rgb_stem|patch_embed|class_embedding|positional_embedding|ln_pre|ln_post)\b"),
    ("vision.adaptors", r"encoder\.adaptors\."),
    ("vision.stems", r"encoder\.stems\."),
    ("vision.resampler", r"encoder\.resampler\."),
    ("decoder.backbone", r"decoder\.layers\.\d+\.(self_attn|self_norm|ffn)\."),
    ("decoder.embeddings", r"decoder\.embed\."),
    ("decoder.cross_attention", r"decoder\.layers\.\d+\.(cross_attn|cross_norm)\."),
    ("decoder.adaptors", r"decoder\.layers\.\d+\.adaptor\."),
    ("decoder.lm_head", r"decoder\.lm_head\."),
)
assert tuple(part for part, _ in PART_PATTERNS) == PART_NAMES


def part_of(parameter_name: str) -> str:
    for part, pattern in PART_PATTERNS:
        if re.match(pattern, parameter_name):
            return part
    raise KeyError(f"parameter {parameter_name!r} belongs to no part")


@dataclass
class PrismerOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # [B, T, V]; with labels, [N, V] for the N predicted positions only


@dataclass(frozen=True)
class PartCount:
    total: int
    trainable: int


class Prismer(nn.Module):
    """Build with :func:`build_model` (or :meth:`from_pretrained`), not directly."""

    def __init__(self, spec: ModelSpec, experts: Mapping[str, ExpertSpec], vision_tower: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.expert_specs: dict[str, ExpertSpec] = dict(sorted(experts.items()))
        self.encoder = VisionEncoder(spec, self.expert_specs, vision_tower)
        self.decoder = TextDecoder(spec.decoder, self.encoder.width, spec.adaptor_ratio)
        #: Names of the weights that came from the backbones' sources (not saved in checkpoints).
        self.pretrained_names: frozenset[str] = frozenset()
        self._tokenizer: Any = None
        self.apply_freezing()

    # -- what users read -------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def image_mean(self) -> tuple[float, float, float]:
        return self.spec.image_mean

    @property
    def image_std(self) -> tuple[float, float, float]:
        return self.spec.image_std

    @property
    def num_vision_tokens(self) -> int:
        return self.encoder.num_tokens

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer the spec names, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.spec.decoder)
        return self._tokenizer

    @property
    def eos_token_id(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, experts: Mapping[str, ExpertSpec] | None = None, device: str | torch.device = "cpu"
    ) -> "Prismer":
        """Load a checkpoint directory written by :func:`prismer_core.checkpoint.save_checkpoint`.

        ``experts`` (the run's expert specs) must be the set the checkpoint was trained with;
        when omitted, the recorded set is used.
        """
        from ..checkpoint import load_checkpoint

        return load_checkpoint(directory, experts=experts, device=device)

    # -- freezing and counting ---------------------------------------------------------------
    def apply_freezing(self) -> None:
        """Parts listed in ``spec.frozen`` stop learning; everything else learns."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(part_of(name) not in self.spec.frozen)

    def parameter_report(self) -> dict[str, PartCount]:
        """Total and trainable parameter counts per part (tied weights counted once)."""
        totals = {part: [0, 0] for part in PART_NAMES}
        for name, parameter in self.named_parameters():
            count = totals[part_of(name)]
            count[0] += parameter.numel()
            count[1] += parameter.numel() if parameter.requires_grad else 0
        return {part: PartCount(total, trainable) for part, (total, trainable) in totals.items() if total}

    # -- running -----------------------------------------------------------------------------
    def encode_images(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Vision tokens [B, num_vision_tokens, width] for a batch of images and expert maps."""
        rgb, maps, instances = self._check_batch(batch)
        return self.encoder(rgb, maps, instances)

    def forward(
        self,
        batch: Mapping[str, Any],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> PrismerOutput:
        """Next-token logits [B, T, V]. With ``labels`` (aligned with ``input_ids``, -100 where
        ignored; shifted here): the mean cross-entropy over the predicted tokens, and the logits
        of just those positions, [N, V] in row-major order of the positions."""
        vision = self.encode_images(batch)
        hidden, _ = self.decoder(input_ids, self.decoder.start(vision), attention_mask)
        if labels is None:
            return PrismerOutput(loss=None, logits=self.decoder.logits(hidden))
        # Only positions that predict a labelled token get logits: with a long prompt and a short
        # answer (VQA) the full [B, T, V] product was most of a tiny model's training step.
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        predicted = targets != -100
        logits = self.decoder.logits(hidden[predicted])
        return PrismerOutput(loss=F.cross_entropy(logits, targets[predicted]), logits=logits)

    @torch.inference_mode()
    def generate(
        self,
        batch: Mapping[str, Any],
        prompt: str | Sequence[str] | torch.Tensor = "",
        *,
        num_beams: int = 3,
        max_new_tokens: int = 20,
        min_length: int = 0,
        use_cache: bool = True,
        return_ids: bool = False,
        eos_token_id: int | None = None,
    ) -> list[str] | list[list[int]]:
        """Continue ``prompt`` for every image: beam search (``num_beams`` > 1) or greedy.

        ``prompt`` is one text for all images, one per image, or token ids (without the end
        token). ``min_length`` is the least number of new tokens before the end token may come.
        Returns the new text of each image (or its token ids, end token excluded). Runs in
        eval mode; ``use_cache=False`` recomputes every step (for checking the cache only).
        With token ids in and out and ``eos_token_id`` given, no tokenizer is needed.
        """
        if num_beams < 1 or max_new_tokens < 1:
            raise PrismerError("num_beams and max_new_tokens must be at least 1")
        with _eval_mode(self):
            vision = self.encode_images(batch)
            tokens, valid = self._prompt_ids(prompt, vision.shape[0])
            state = self.decoder.start(vision)
            if num_beams > 1:
                state = state.repeat_interleave(num_beams)
                tokens, valid = tokens.repeat_interleave(num_beams, 0), valid.repeat_interleave(num_beams, 0)

            def step(tokens: torch.Tensor, valid: torch.Tensor, state: DecoderCache):
                if use_cache:
                    seen = state.length
                    hidden, state = self.decoder(tokens[:, seen:], state, valid[:, seen:])
                else:
                    hidden, _ = self.decoder(tokens, DecoderCache(cross=state.cross), valid)
                return F.log_softmax(self.decoder.logits(hidden[:, -1]).float(), dim=-1), state

            eos = self.eos_token_id if eos_token_id is None else eos_token_id
            options = dict(max_new_tokens=max_new_tokens, min_length=min_length, eos_id=eos)
            if num_beams == 1:
                ids = greedy_search(step, tokens, valid, state, **options)
            else:
                ids = beam_search(step, DecoderCache.reorder, tokens, valid, state, num_beams=num_beams, **options)
        if return_ids:
            return ids
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def score(
        self,
        batch: Mapping[str, Any],
        prompt: str | Sequence[str],
        candidates: Sequence[str],
        *,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Log-likelihood [B, C] of each candidate (plus the end token) following ``prompt``.

        The prompt is run once per image with the cache; candidates are then scored in chunks
        that reuse it. ``normalize`` divides by the number of candidate tokens.
        """
        if not candidates:
            raise PrismerError("score needs at least one candidate")
        with _eval_mode(self):
            vision = self.encode_images(batch)
            images = vision.shape[0]
            tokens, valid = self._prompt_ids(prompt, images)
            hidden, prompt_cache = self.decoder(tokens, self.decoder.start(vision), valid)
            first = F.log_softmax(self.decoder.logits(hidden[:, -1]).float(), dim=-1)  # [B, V]
            cand, cand_valid = self._candidate_ids(candidates, vision.device)
            length, vocab = cand.shape[1], first.shape[1]
            chunk = max(1, (1 << 24) // max(1, images * length * vocab))  # bound the logits' memory
            scores = []
            for start in range(0, len(candidates), chunk):
                ids, ok = cand[start : start + chunk], cand_valid[start : start + chunk]
                count = ids.shape[0]
                cache = prompt_cache.repeat_interleave(count)
                rows_ids, rows_ok = ids.repeat(images, 1), ok.repeat(images, 1)
                hidden, _ = self.decoder(rows_ids, cache, rows_ok)
                rest = F.log_softmax(self.decoder.logits(hidden[:, :-1]).float(), dim=-1)
                picked = torch.cat(
                    [first.repeat_interleave(count, 0).gather(1, rows_ids[:, :1]),
                     rest.gather(2, rows_ids[:, 1:, None])[..., 0]],
                    dim=1,
                )
                total = picked.masked_fill(~rows_ok, 0.0).sum(1)
                if normalize:
                    total = total / rows_ok.sum(1)
                scores.append(total.reshape(images, count))
        return torch.cat(scores, dim=1)

    # -- inputs ------------------------------------------------------------------------------
    def _check_batch(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict, dict]:
        rgb = batch.get("rgb")
        size = self.image_size
        if not isinstance(rgb, torch.Tensor) or rgb.ndim != 4 or tuple(rgb.shape[1:]) != (3, size, size):
            shape = tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__
            raise PrismerError(f"batch['rgb'] must be a float tensor [B, 3, {size}, {size}], got {shape}")
        dtype = self.encoder.patch_embed.weight.dtype
        maps = dict(batch.get("experts") or {})
        instances = dict(batch.get("instances") or {})
        unknown = sorted(set(maps) - set(self.expert_specs))
        if unknown:
            raise PrismerError(
                f"batch has maps of experts the model was not built for: {', '.join(unknown)} "
                f"(model experts: {', '.join(self.expert_specs) or 'none'})"
            )
        checked = {}
        for name, expert in self.expert_specs.items():
            channels = self.spec.semantic_channels if expert.is_semantic else expert.channels
            value = maps.get(name)
            expected = (rgb.shape[0], channels, size, size)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else "nothing"
                raise PrismerError(f"batch['experts']['{name}'] must have shape {list(expected)}, got {got}")
            checked[name] = value.to(dtype)
            if expert.has_instances:
                ids = instances.get(name)
                if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != (rgb.shape[0], size, size):
                    got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else "nothing"
                    raise PrismerError(
                        f"batch['instances']['{name}'] must be an integer map [{rgb.shape[0]}, {size}, {size}], got {got}"
                    )
        return rgb.to(dtype), checked, instances

    def _prompt_ids(self, prompt: str | Sequence[str] | torch.Tensor, images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt token ids [B, T] without the end token, left-padded, and which are real."""
        device = self.encoder.patch_embed.weight.device
        if isinstance(prompt, torch.Tensor):
            ids = (prompt if prompt.ndim == 2 else prompt[None].expand(images, -1)).to(device)
            return ids, torch.ones_like(ids, dtype=torch.bool)
        texts = [prompt] * images if isinstance(prompt, str) else list(prompt)
        if len(texts) != images:
            raise PrismerError(f"got {len(texts)} prompts for {images} images")
        eos = self.eos_token_id
        rows = [ids[:-1] if ids and ids[-1] == eos else ids for ids in self.tokenizer(texts)["input_ids"]]
        width = max(len(ids) for ids in rows)
        pad = self.spec.decoder.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        valid = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows], device=device)
        return ids, valid

    def _candidate_ids(self, candidates: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates as continuations (' ' + text + end token), right-padded."""
        rows = [ids + [self.eos_token_id] for ids in self.tokenizer([" " + c for c in candidates], add_special_tokens=False)["input_ids"]]
        width = max(len(r) for r in rows)
        pad = self.spec.decoder.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        valid = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows], device=device)
        return ids, valid


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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


def build_model(
    spec: str | Path | ModelSpec,
    experts: Mapping[str, ExpertSpec] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> Prismer:
    """A Prismer model for ``spec`` (name, YAML path or ModelSpec) and an expert set.

    Backbone weights come from the spec's sources (open_clip tag or file, transformers id or
    directory). ``device="meta"`` builds shapes only: nothing is downloaded or allocated, which
    is how ``prismer model info`` counts parameters. No experts: PrismerZ.
    """
    spec = load_spec(spec)
    experts = dict(experts or {})
    for name, expert in experts.items():
        if not isinstance(expert, ExpertSpec) or expert.name != name:
            raise PrismerError(f"experts must map each name to its ExpertSpec; got {name!r} -> {expert!r}")
    meta = torch.device(device).type == "meta"
    tower = load_vision_tower(spec, device)
    with torch.device(device):
        model = Prismer(spec, experts, tower)
    pretrained: set[str] = set()
    if spec.vision.pretrained and not meta:
        pretrained |= {f"encoder.{name}" for name, _ in model.encoder.named_parameters() if part_of(f"encoder.{name}") in ("vision.backbone", "vision.embeddings")}
    if spec.decoder.weights and not meta:
        pretrained |= {f"decoder.{name}" for name in load_pretrained_decoder(model.decoder, spec.decoder)}
    model.pretrained_names = frozenset(pretrained)
    return model
