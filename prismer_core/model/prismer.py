"""Prismer: the vision encoder over RGB and experts, the language decoder, and what users call.

``build_model(spec, experts)`` makes one; ``model(inputs, input_ids, attention_mask, labels)``
gives the caption loss; ``generate`` continues prompt ids (greedy or beam search, with a
key/value cache); ``score`` gives the log-likelihood of candidate continuations; and
``parameter_report`` counts parameters per part. With the spec's contrastive pass (MaMMUT,
:mod:`.contrastive`) ``forward`` also gives the contrastive loss of the batch's image-text
pairs, and ``embed_images`` / ``embed_texts`` give the embeddings retrieval compares. The model reads
:class:`~prismer_core.inputs.ModelInputs` and token ids only: text is tokenised and decoded by
:mod:`prismer_core.text`. With no experts it is PrismerZ: RGB only, no resampler.

The language side is chosen by the spec's ``decoder.kind``: the RoBERTa-style decoder with
cross-attention (:mod:`.decoder`), or a frozen causal LM read through a mapper
(:mod:`.causal_lm`); both take a key/value cache from ``start(vision tokens)``.
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

from .. import checkpoint
from ..errors import PrismerError
from ..experts.contract import ExpertSpec
from ..inputs import ModelInputs
from ..lm_source import LMSourceError
from ..specs import PART_NAMES, ModelSpec, load_spec
from ..text import PairedText, TokenRows
from .causal_lm import CausalLMDecoder, LMCache, load_language_model
from .contrastive import ContrastiveHeads, contrastive_loss
from .decoder import DecoderCache, TextDecoder, load_pretrained_decoder
from .generation import beam_search, greedy_search
from .reconstruction import PixelReconstruction
from .stems import LabelMap
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
    ("decoder.mapper", r"decoder\.mapper\."),
    ("decoder.lora", r"decoder\.lm\..*\.lora_"),
    ("decoder.lm", r"decoder\.lm\."),
    ("contrastive", r"contrastive\."),
    ("reconstruction", r"reconstruction\."),
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
    #: With image-text pairs given: the contrastive (InfoNCE) loss over the global batch.
    contrastive_loss: torch.Tensor | None = None
    #: With labels and the spec's pixel reconstruction: its mean squared error (unweighted).
    reconstruction_loss: torch.Tensor | None = None


@dataclass(frozen=True)
class PartCount:
    total: int
    trainable: int


class Prismer(nn.Module):
    """Build with :func:`build_model` (or :meth:`from_pretrained`), not directly."""

    def __init__(self, spec: ModelSpec, experts: Mapping[str, ExpertSpec], vision_tower: nn.Module,
                 language_model: nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.expert_specs: dict[str, ExpertSpec] = dict(sorted(experts.items()))
        self.encoder = VisionEncoder(spec, self.expert_specs, vision_tower)
        self.decoder: TextDecoder | CausalLMDecoder
        if spec.decoder.kind == "causal_lm":  # the language side, by the spec's decoder.kind
            if language_model is None:
                raise PrismerError("a causal_lm decoder needs its language model (build with build_model)")
            self.decoder = CausalLMDecoder(spec.decoder, self.encoder.width, language_model)
        else:
            self.decoder = TextDecoder(spec.decoder, self.encoder.width, spec.adaptor_ratio)
        self.reconstruction = (  # built after the rest of the model, which then starts as without it
            PixelReconstruction(spec.reconstruction, self.encoder.width) if spec.reconstruction.weight > 0 else None
        )
        if spec.contrastive.enabled:  # built last: every other weight starts as without it
            self.contrastive = ContrastiveHeads(spec.contrastive, self.encoder.width, self.encoder.blocks[0].attn.num_heads,
                                                spec.decoder.hidden, spec.decoder.heads)
        #: Names of the weights that came from the backbones' sources (not saved in checkpoints).
        self.pretrained_names: frozenset[str] = frozenset()
        #: The causal LM's files and hash (recorded in checkpoints; None for the other decoder).
        self.language_model_identity: dict[str, Any] | None = None
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

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, experts: Mapping[str, ExpertSpec] | None = None, device: str | torch.device = "cpu"
    ) -> "Prismer":
        """Rebuild the model of a checkpoint directory (backbones from their sources) and load
        its weights, checked first (:mod:`prismer_core.checkpoint`).

        ``experts`` (the run's expert specs) must be the set the checkpoint was trained with
        (same names, versions and shapes); when omitted, the recorded set is used.
        """
        info = checkpoint.read_checkpoint_info(directory)
        if experts is not None:
            checkpoint.check_same_experts(info, experts)
        try:
            model = build_model(info.spec, experts if experts is not None else info.experts, device=device)
        except LMSourceError as exc:
            raise checkpoint.CheckpointError(f"checkpoint {info.directory} needs its language model: {exc}") from None
        checkpoint.check_same_language_model(info, model.language_model_identity)
        checkpoint.load_weights(model, info, set(checkpoint.saved_weight_names(model)), device)
        return model

    def save_pretrained(
        self,
        directory: str | Path,
        extra: Mapping[str, Any] | None = None,
        *,
        label_encoder: str | None = None,
        label_encoder_file: str | Path | None = None,
    ) -> Path:
        """Write a checkpoint directory atomically (see :func:`prismer_core.checkpoint.save_checkpoint`)."""
        return checkpoint.save_checkpoint(self, directory, extra, label_encoder=label_encoder,
                                          label_encoder_file=label_encoder_file)

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
    def encode_images(self, inputs: ModelInputs) -> torch.Tensor:
        """Vision tokens [B, num_vision_tokens, width] for a batch of images and expert maps."""
        return self._encode(inputs)[0]

    def _encode(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Vision tokens and which of them the decoder may attend to ([B, T] bool; None: all)."""
        rgb, maps, instances, present = self._check_inputs(inputs)
        return self.encoder(rgb, maps, instances, present), self.encoder.vision_mask(present, rgb.shape[0])

    def forward(
        self,
        inputs: ModelInputs,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pairs: PairedText | None = None,
        row_image: torch.Tensor | None = None,
        buckets: Sequence[tuple[int, int, int]] | None = None,
    ) -> PrismerOutput:
        """Next-token logits [B, T, V]. With ``labels`` (aligned with ``input_ids``, -100 where
        ignored; shifted here): the mean cross-entropy over the predicted tokens, and the logits
        of just those positions, [N, V] in row-major order of the positions (V: the decoder's output
        vocabulary, ``spec.decoder.output_vocabulary``). With ``pairs``
        (the batch's descriptions, model built with the contrastive pass): the contrastive loss
        too, both passes over the same weights as in MaMMUT. With ``row_image`` [R] the R text rows
        read image ``row_image[i]`` each (several texts per image; images encoded once). With
        ``buckets`` (rows sorted by length, :func:`prismer_core.data.dataset.length_buckets`) each
        run of rows is decoded at its own width: right-padded rows give the same numbers at any
        width, so only the padding's work is saved."""
        vision, seen = self._encode(inputs)
        state = self.decoder.start(vision, seen)
        if buckets is None:
            hidden, _ = self.decoder(input_ids, state if row_image is None else state.for_rows(row_image), attention_mask)
        else:
            rows = row_image if row_image is not None else torch.arange(input_ids.shape[0], device=input_ids.device)
            parts = []
            for first, end, width in buckets:  # contiguous runs, in order: the rows come back as they went in
                part, _ = self.decoder(input_ids[first:end, :width], state.for_rows(rows[first:end]),
                                       None if attention_mask is None else attention_mask[first:end, :width])
                parts.append(F.pad(part, (0, 0, 0, input_ids.shape[1] - width)))
            hidden = torch.cat(parts)
        contrastive = self._contrastive_loss(vision, pairs) if pairs is not None else None
        if labels is None:
            return PrismerOutput(loss=None, logits=self.decoder.logits(hidden), contrastive_loss=contrastive)
        # Only positions that predict a labelled token get logits: with a long prompt and a short
        # answer (VQA) the full [B, T, V] product was most of a tiny model's training step.
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        predicted = targets != -100
        logits, places = self.decoder.target_logits(hidden[predicted], targets[predicted])
        reconstruction = None
        if self.reconstruction is not None:  # the RGB patch tokens follow the class token
            grid = self.encoder.grid
            reconstruction = self.reconstruction(vision[:, 1 : 1 + grid**2], inputs.rgb.to(vision.dtype), grid)
        return PrismerOutput(loss=F.cross_entropy(logits, places), logits=logits, contrastive_loss=contrastive,
                             reconstruction_loss=reconstruction)

    def _contrastive_loss(self, vision: torch.Tensor, pairs: PairedText) -> torch.Tensor:
        heads = self.contrastive_heads
        images = heads.embed_images(vision if self.spec.contrastive.vision_gradient else vision.detach())
        if len(pairs.rows):
            texts = heads.embed_texts(self.decoder.encode_text(pairs.ids, pairs.valid), pairs.valid)
        else:  # no description in this process's batch; the other processes' may have some
            texts = images[:0]
        return contrastive_loss(images, texts, pairs.rows, pairs.image_keys, pairs.text_keys, heads.scale)

    # -- the contrastive pass: embeddings for retrieval ---------------------------------------
    @property
    def contrastive_heads(self) -> ContrastiveHeads:
        """The contrastive pass's heads, or a clear error for a model built without them."""
        heads = getattr(self, "contrastive", None)
        if heads is None:
            raise PrismerError(
                "this model has no contrastive pass (its spec has contrastive.enabled: false), so it cannot embed "
                "images or texts for retrieval; train one with `prismer train --spec-set contrastive.enabled=true`"
            )
        return heads

    @torch.inference_mode()
    def embed_images(self, inputs: ModelInputs) -> torch.Tensor:
        """Unit-length image embeddings [B, contrastive.dim] (eval mode, no gradient)."""
        heads = self.contrastive_heads
        with _eval_mode(self):
            return heads.embed_images(self.encode_images(inputs)).float()

    @torch.inference_mode()
    def embed_texts(self, texts: TokenRows) -> torch.Tensor:
        """Unit-length text embeddings [N, contrastive.dim] of right-padded ``[BEGIN] text [END]``
        rows (:meth:`prismer_core.text.TextCodec.text_batch`), by the bidirectional text pass."""
        heads = self.contrastive_heads
        device = self.encoder.patch_embed.weight.device
        ids, valid = texts.ids.to(device), texts.valid.to(device)
        with _eval_mode(self):
            return heads.embed_texts(self.decoder.encode_text(ids, valid), valid).float()

    @torch.inference_mode()
    def generate(
        self,
        inputs: ModelInputs,
        prompt: TokenRows,
        *,
        end_token_id: int,
        num_beams: int = 3,
        max_new_tokens: int = 20,
        min_length: int = 0,
        use_cache: bool = True,
    ) -> list[list[int]]:
        """Continue ``prompt`` (one row per image, left-padded, without the end token) for every
        image: beam search (``num_beams`` > 1) or greedy. ``min_length`` is the least number of
        new tokens before ``end_token_id`` may come. Returns each image's new token ids (end
        token excluded; :meth:`prismer_core.text.TextCodec.decode` makes text of them). Runs in
        eval mode; ``use_cache=False`` recomputes every step (for checking the cache only).
        """
        if num_beams < 1 or max_new_tokens < 1:
            raise PrismerError("num_beams and max_new_tokens must be at least 1")
        with _eval_mode(self):
            vision, seen = self._encode(inputs)
            tokens, valid = self._prompt_rows(prompt, vision.shape[0])
            state = self.decoder.start(vision, seen)
            if num_beams > 1:
                state = state.repeat_interleave(num_beams)
                tokens, valid = tokens.repeat_interleave(num_beams, 0), valid.repeat_interleave(num_beams, 0)

            def step(tokens: torch.Tensor, valid: torch.Tensor, state: DecoderCache | LMCache):
                if use_cache:
                    seen = state.length
                    hidden, state = self.decoder(tokens[:, seen:], state, valid[:, seen:])
                else:
                    hidden, _ = self.decoder(tokens, state.image_only(), valid)
                return F.log_softmax(self.decoder.logits(hidden[:, -1]).float(), dim=-1), state

            options = dict(max_new_tokens=max_new_tokens, min_length=min_length, eos_id=end_token_id)
            if num_beams == 1:
                return greedy_search(step, tokens, valid, state, **options)
            return beam_search(step, type(state).reorder, tokens, valid, state, num_beams=num_beams, **options)

    @torch.no_grad()
    def score(
        self,
        inputs: ModelInputs,
        prompt: TokenRows,
        candidates: TokenRows,
        *,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Log-likelihood [B, C] of each candidate continuation (right-padded rows, end token
        included) following each image's ``prompt``.

        The prompt is run once per image with the cache; candidates are then scored in chunks
        that reuse it. ``normalize`` divides by the number of candidate tokens.
        """
        if not len(candidates):
            raise PrismerError("score needs at least one candidate")
        with _eval_mode(self):
            vision, seen = self._encode(inputs)
            images = vision.shape[0]
            tokens, valid = self._prompt_rows(prompt, images)
            hidden, prompt_cache = self.decoder(tokens, self.decoder.start(vision, seen), valid)
            first = F.log_softmax(self.decoder.logits(hidden[:, -1]).float(), dim=-1)  # [B, V]
            cand, cand_valid = candidates.ids.to(vision.device), candidates.valid.to(vision.device)
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
    def _check_inputs(self, inputs: ModelInputs) -> tuple[torch.Tensor, dict, dict, dict]:
        """The image, maps, instances and presence masks, checked against what the model was built for."""
        if not isinstance(inputs, ModelInputs):
            raise PrismerError(f"the model reads ModelInputs (prismer_core.inputs), got {type(inputs).__name__}")
        rgb, size = inputs.rgb, self.image_size
        if not isinstance(rgb, torch.Tensor) or rgb.ndim != 4 or tuple(rgb.shape[1:]) != (3, size, size):
            shape = tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__
            raise PrismerError(f"inputs.rgb must be a float tensor [B, 3, {size}, {size}], got {shape}")
        dtype = self.encoder.patch_embed.weight.dtype
        unknown = sorted(set(inputs.experts) - set(self.expert_specs))
        if unknown:
            raise PrismerError(
                f"inputs have maps of experts the model was not built for: {', '.join(unknown)} "
                f"(model experts: {', '.join(self.expert_specs) or 'none'})"
            )
        present = {}
        for name, mask in inputs.present.items():
            if name not in self.expert_specs:
                raise PrismerError(f"inputs.present names '{name}', an expert the model was not built for")
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (rgb.shape[0],):
                got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise PrismerError(f"inputs.present['{name}'] must be a bool tensor [{rgb.shape[0]}], got {got}")
            present[name] = mask.to(device=rgb.device, dtype=torch.bool)
        checked, semantic = {}, {}
        for name, expert in self.expert_specs.items():
            value = inputs.experts.get(name)
            if expert.is_semantic:
                semantic[name] = self._checked_label_ids(name, value, inputs.label_tables.get(name), rgb.shape[0])
            else:
                expected = (rgb.shape[0], expert.channels, size, size)
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
                    got = tuple(value.shape) if isinstance(value, torch.Tensor) else "nothing"
                    raise PrismerError(f"inputs.experts['{name}'] must have shape {list(expected)}, got {got}")
                checked[name] = value.to(dtype)
            if expert.has_instances:
                ids = inputs.instances.get(name)
                if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != (rgb.shape[0], size, size):
                    got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else "nothing"
                    raise PrismerError(
                        f"inputs.instances['{name}'] must be an integer map [{rgb.shape[0]}, {size}, {size}], got {got}"
                    )
        if semantic:  # one look at the ids of all of them (one wait for the device, not one each)
            bounds = torch.stack([torch.stack([ids.min(), ids.max()]) for ids, _ in semantic.values()]).tolist()
            for (name, (ids, table)), (low, high) in zip(semantic.items(), bounds):
                if low < 0 or high >= table.shape[1]:
                    raise PrismerError(f"inputs.experts['{name}'] has label ids {low}..{high}, "
                                       f"but its label table has {table.shape[1]} rows")
                checked[name] = LabelMap(ids, table.to(dtype))
        return rgb.to(dtype), {name: checked[name] for name in self.expert_specs}, dict(inputs.instances), present

    def _checked_label_ids(self, name: str, ids, table, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A semantic expert's label ids and table, their shapes checked (their values are
        checked for all semantic experts at once by the caller)."""
        size, channels = self.image_size, self.spec.semantic_channels
        if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != (batch, size, size) or ids.is_floating_point():
            got = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, torch.Tensor) else "nothing"
            raise PrismerError(f"inputs.experts['{name}'] must be label ids [{batch}, {size}, {size}] "
                               f"(a semantic expert), got {got}")
        if not isinstance(table, torch.Tensor) or table.ndim != 3 or tuple(table.shape[::2]) != (batch, channels) or not table.shape[1]:
            got = list(table.shape) if isinstance(table, torch.Tensor) else "nothing"
            raise PrismerError(f"inputs.label_tables['{name}'] must be [{batch}, K, {channels}], got {got}")
        return ids, table

    def _prompt_rows(self, prompt: TokenRows, images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids and validity on the model's device, one row per image (one row is shared)."""
        device = self.encoder.patch_embed.weight.device
        ids, valid = prompt.ids.to(device), prompt.valid.to(device).bool()
        if ids.shape[0] == 1 and images > 1:
            ids, valid = ids.expand(images, -1), valid.expand(images, -1)
        if ids.shape[0] != images:
            raise PrismerError(f"got {ids.shape[0]} prompts for {images} images")
        return ids, valid


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
    language_model, lm_files = load_language_model(spec.decoder, device) if spec.decoder.kind == "causal_lm" else (None, None)
    with torch.device(device):
        model = Prismer(spec, experts, tower, language_model)
    pretrained: set[str] = set()
    if spec.vision.pretrained and not meta:
        # a conv stem (and the projection it ends in) replaces the tower's patchify layer: not from the source
        replaced = ("rgb_stem.", "patch_embed.") if model.encoder.rgb_stem is not None else ()
        pretrained |= {f"encoder.{name}" for name, _ in model.encoder.named_parameters()
                       if part_of(f"encoder.{name}") in ("vision.backbone", "vision.embeddings") and not name.startswith(replaced)}
    if isinstance(model.decoder, CausalLMDecoder):
        if lm_files is not None:  # frozen LM weights are found again from their source, never copied
            pretrained |= {f"decoder.{name}" for name in model.decoder.pretrained_names()}
            model.language_model_identity = lm_files.identity()
    elif spec.decoder.weights and not meta:
        pretrained |= {f"decoder.{name}" for name in load_pretrained_decoder(model.decoder, spec.decoder)}
    model.pretrained_names = frozenset(pretrained)
    return model
