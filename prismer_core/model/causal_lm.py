"""The causal-LM language side: a frozen, pre-trained decoder-only LM read through a mapper.

The other family of parameter-efficient vision-language models (Frozen, MAPL, BLIP-2): the
vision tokens become K prefix embeddings (:class:`~prismer_core.model.mapper.QueryMapper`),
and any transformers ``AutoModelForCausalLM`` (Llama/SmolLM, GPT-2, OPT, Qwen...) reads
``[prefix ; prompt ; text]`` with its own weights frozen (optionally LoRA through peft).

It speaks the cross-attention decoder's interface, so the model's ``forward``, ``generate``
and ``score`` run either: :meth:`CausalLMDecoder.start` runs the prefix through the LM once
and keeps its keys/values in an :class:`LMCache` (what cross-attention keys/values are to the
other decoder), ``forward`` continues after the cache with the LM's own key/value cache,
``logits`` is the LM's output head.

Weights come from the spec's ``decoder.weights`` (:mod:`prismer_core.lm_source`: an id, a
folder, a GGUF file); ``decoder.config`` writes the LM's configuration out, so the model is
built on the meta device without them, and checked against them when they arrive.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from ..errors import PrismerError
from ..lm_source import LMFiles, LMSourceError, load_error, resolve_lm
from ..specs import CausalLMSpec
from .layers import KeyValue
from .mapper import QueryMapper

#: Config fields compared between the spec and the weights that arrive (where both have them).
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size")


@dataclass
class LMCache:
    """The LM's keys/values of every position so far (the prefix first) and which are real."""

    layers: list[KeyValue]
    valid: torch.Tensor  # [B, prefix + T] bool
    prefix: int

    @property
    def length(self) -> int:
        """Text tokens seen (the prefix not counted)."""
        return self.valid.shape[1] - self.prefix

    def image_only(self) -> "LMCache":
        """The cache of the prefix alone, before any text."""
        keep = self.prefix
        return LMCache([(k[:, :, :keep], v[:, :, :keep]) for k, v in self.layers], self.valid[:, :keep], keep)

    def reorder(self, rows: torch.Tensor) -> "LMCache":
        """Pick rows (beam search follows its beams)."""
        layers = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.layers]
        return LMCache(layers, self.valid.index_select(0, rows), self.prefix)

    def for_rows(self, row_image: torch.Tensor) -> "LMCache":
        """The prefixes' cache for text rows that read image ``row_image[i]`` each."""
        return self.reorder(row_image)

    def repeat_interleave(self, repeats: int) -> "LMCache":
        """Each row ``repeats`` times in a row (one image's cache for several beams or candidates)."""
        layers = [(k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0)) for k, v in self.layers]
        return LMCache(layers, self.valid.repeat_interleave(repeats, 0), self.prefix)

    def to_transformers(self):
        """A fresh transformers ``DynamicCache`` holding these keys/values (it grows in place)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, (k, v) in enumerate(self.layers):
            cache.update(k, v, index)
        return cache

    @staticmethod
    def layers_of(cache: Any) -> list[KeyValue]:
        return [(layer.keys, layer.values) for layer in cache.layers]


class CausalLMDecoder(nn.Module):
    """The mapper and the LM; build with :func:`prismer_core.model.build_model`."""

    def __init__(self, spec: CausalLMSpec, vision_width: int, lm: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        m = spec.mapper
        self.mapper = QueryMapper(vision_width, spec.hidden, m.queries, m.layers, m.heads, m.width)
        embeddings = lm.get_input_embeddings().weight
        if embeddings.device.type != "meta":
            self.mapper.match_scale(embeddings)
        self.lm = add_lora(lm, spec) if spec.lora.rank else lm

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers ``*ForCausalLM`` (inside peft's wrapper when LoRA is on)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def start(self, vision_tokens: torch.Tensor, vision_mask: torch.Tensor | None = None) -> LMCache:
        """Map the images to their prefix and run it through the LM once; ``vision_mask`` [B, T]
        bool: the vision tokens the mapper may read (None: all)."""
        prefix = self.mapper(vision_tokens, vision_mask)
        valid = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
        out = self._run(prefix, valid, torch.arange(prefix.shape[1], device=prefix.device).expand_as(valid), None)
        return LMCache(LMCache.layers_of(out.past_key_values), valid, prefix.shape[1])

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: LMCache,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LMCache]:
        """Run new tokens [B, T] after those in ``cache``; return hidden states and the longer cache."""
        valid_new = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        valid = torch.cat([cache.valid, valid_new], dim=1)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)[:, cache.valid.shape[1] :]
        embeds = self.causal_lm.get_input_embeddings()(input_ids)
        out = self._run(embeds, valid, positions, cache)
        return out.last_hidden_state, LMCache(LMCache.layers_of(out.past_key_values), valid, cache.prefix)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_output_embeddings()(hidden)

    def target_logits(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's logits and targets: the LM writes its whole vocabulary."""
        return self.logits(hidden), targets

    def _run(self, embeds: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, cache: LMCache | None):
        trunk = self.causal_lm.base_model  # LlamaModel, GPT2Model, OPTModel...: hidden states, not logits
        past = cache.to_transformers() if cache is not None else None
        if past is None:
            from transformers import DynamicCache

            past = DynamicCache()
        return trunk(inputs_embeds=embeds, attention_mask=valid.long(), position_ids=positions,
                     past_key_values=past, use_cache=True)

    def pretrained_names(self) -> list[str]:
        """State-dict names (under this module) of the LM's own weights, LoRA's excepted."""
        return [f"lm.{name}" for name in self.lm.state_dict() if "lora_" not in name]


# -- loading ------------------------------------------------------------------------------------


def config_from_spec(spec: CausalLMSpec):
    from transformers import AutoConfig

    fields = dict(spec.config)
    model_type = fields.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError, TypeError) as exc:
        raise PrismerError(f"decoder.config: transformers cannot make a {model_type!r} config of it: {exc}") from None


def load_language_model(spec: CausalLMSpec, device: str | torch.device = "cpu") -> tuple[nn.Module, LMFiles | None]:
    """The spec's LM, frozen weights from its source (or built from ``config`` on the meta
    device, or randomly initialised without weights), and where its files are."""
    from transformers import AutoModelForCausalLM

    if torch.device(device).type == "meta" or spec.weights is None:
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config_from_spec(spec)), None
    files = resolve_lm(spec.weights)
    lm = copy.deepcopy(_pretrained(files))  # the cached copy stays untouched (dtype changes, LoRA)
    check_config(lm.config, spec, files.source)
    return lm.to(device), files


@lru_cache(maxsize=2)
def _pretrained(files: LMFiles) -> nn.Module:
    """Load once per process (a GGUF file is dequantised on every load: 30 s for SmolLM2)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    name, options = files.pretrained_args()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        lm = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **options)
    except LMSourceError:
        raise
    except Exception as exc:
        raise load_error("the language model", files, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return lm.eval()


def check_config(config: Any, spec: CausalLMSpec, source: str) -> None:
    """The spec must describe the LM that arrived; a width the mapper cannot write is named first."""
    wanted = config_from_spec(spec)
    if config.model_type != wanted.model_type:
        raise PrismerError(f"language model {source!r} is a {config.model_type!r} model but decoder.config says {wanted.model_type!r}")
    if config.hidden_size != spec.hidden:
        raise PrismerError(
            f"language model {source!r} is {config.hidden_size} wide, but the mapper writes {spec.hidden}-wide prefix "
            f"embeddings (decoder.config.hidden_size): set it to {config.hidden_size}"
        )
    for field in SHAPE_FIELDS:
        theirs, ours = getattr(config, field, None), getattr(wanted, field, None)
        if field in spec.config and theirs != ours:
            raise PrismerError(f"language model {source!r} has {field}={theirs} but the spec says decoder.config.{field}={ours}")


def add_lora(lm: nn.Module, spec: CausalLMSpec) -> nn.Module:
    """LoRA adapters in the LM's layers through peft (spec ``decoder.lora``, off at rank 0)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise PrismerError("decoder.lora.rank > 0 needs the peft package: pip install 'prismer[lora]'") from None
    lora = spec.lora
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules) if lora.target_modules else None)
    try:
        return get_peft_model(lm, config)
    except ValueError as exc:
        raise PrismerError(f"decoder.lora: {exc}") from None
