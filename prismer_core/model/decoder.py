"""The language decoder: RoBERTa (or BERT) layers made causal, with cross-attention and adaptors.

The layout is the one of transformers' RoBERTa (post-norm blocks, learned positions, an MLM head
tied to the word embeddings), so its pre-trained weights load one to one (see
:func:`load_pretrained_decoder`). Each layer is: causal self-attention → cross-attention to the
vision tokens → adaptor → feed-forward. Attention runs on PyTorch's fused
scaled_dot_product_attention; a :class:`DecoderCache` keeps the self-attention keys/values of
past tokens and the cross-attention keys/values of the image, so each generated token costs
one position, not the whole sequence.

The same layers also run MaMMUT's contrastive pass (:meth:`TextDecoder.encode_text`): text
alone, every token seeing every other (no causal mask), cross-attention skipped.

We own these ~200 lines instead of wrapping transformers' layer classes because their
signatures and cache objects change between releases (transformers 5 broke ``generate()`` for
this very model), and because the adaptor must sit inside the layer and the cross-attention
must accept vision tokens of another width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrismerError
from ..specs import DecoderSpec, resolve_source, source_error
from .layers import Adaptor, KeyValue, MultiHeadAttention
from .packed import linear


@dataclass
class DecoderCache:
    """Keys/values kept between calls: cross-attention ones (per image) and past tokens' ones."""

    cross: list[KeyValue]
    past: list[KeyValue] | None = None
    valid: torch.Tensor | None = None  # [B, T] bool: which past tokens are real (not padding)
    #: [B, 1, 1, T_vision] bool: vision tokens the cross-attention may read (None: all); it hides
    #: the latents of an image that has no expert map
    cross_mask: torch.Tensor | None = None
    #: rows per image: ``group`` consecutive rows (beams, candidates) read one image's ``cross``
    #: and ``cross_mask``, stored once (see :meth:`repeat_interleave`)
    group: int = 1

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    def image_only(self) -> "DecoderCache":
        """The cache of the images alone, before any token."""
        return DecoderCache(cross=self.cross, cross_mask=self.cross_mask, group=self.group)

    def reorder(self, rows: torch.Tensor) -> "DecoderCache":
        """Pick past rows (beam search); ``rows`` must stay within each image's group of beams,
        so the cross-attention keys/values, identical within a group, are left as they are."""
        if self.past is None:
            return self
        past = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.past]
        return replace(self, past=past, valid=self.valid.index_select(0, rows))

    def for_rows(self, row_image: torch.Tensor) -> "DecoderCache":
        """The images' cache for text rows that read image ``row_image[i]`` each (training on
        several texts of one image): the keys/values are gathered, not computed again."""
        pick = lambda t: t.index_select(0, row_image)  # noqa: E731
        return DecoderCache(cross=[(pick(k), pick(v)) for k, v in self.cross],
                            cross_mask=None if self.cross_mask is None else pick(self.cross_mask))

    def repeat_interleave(self, repeats: int) -> "DecoderCache":
        """Each row ``repeats`` times in a row (one image's cache for several beams or candidates).

        The image's cross-attention keys/values are not copied: the rows of a group read them
        together, as one image with ``group`` queries (:class:`~.layers.MultiHeadAttention`),
        which reads them once instead of once per row (6x faster in bf16 for 3 beams).
        """
        def rep(pair: KeyValue) -> KeyValue:
            return pair[0].repeat_interleave(repeats, 0), pair[1].repeat_interleave(repeats, 0)

        return DecoderCache(
            cross=self.cross,
            past=None if self.past is None else [rep(kv) for kv in self.past],
            valid=None if self.valid is None else self.valid.repeat_interleave(repeats, 0),
            cross_mask=self.cross_mask,
            group=self.group * repeats,
        )


class TextEmbeddings(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.offset = spec.position_offset
        self.tokens = nn.Embedding(spec.vocab_size, spec.hidden, padding_idx=spec.pad_token_id)
        self.positions = nn.Embedding(spec.max_positions, spec.hidden)
        self.token_types = nn.Embedding(spec.type_vocab_size, spec.hidden)
        self.norm = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids) + self.positions(positions + self.offset) + self.token_types.weight[0]
        return self.dropout(self.norm(x))


class FeedForward(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.fc_in = nn.Linear(spec.hidden, spec.intermediate)
        self.fc_out = nn.Linear(spec.intermediate, spec.hidden)
        self.norm = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.fc_out(F.gelu(self.fc_in(x)))))


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, vision_width: int, adaptor_hidden: int) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(spec.hidden, spec.heads, dropout=spec.attention_dropout)
        self.self_norm = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)
        self.cross_attn = MultiHeadAttention(spec.hidden, spec.heads, kv_dim=vision_width, dropout=spec.attention_dropout)
        self.cross_norm = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)
        self.adaptor = Adaptor(spec.hidden, adaptor_hidden, eps=spec.layer_norm_eps)
        self.ffn = FeedForward(spec)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cross_kv: KeyValue | None,
        past: KeyValue | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        cross_mask: torch.Tensor | None = None,
        group: int = 1,
    ) -> tuple[torch.Tensor, KeyValue]:
        k, v = self.self_attn.project_kv(x)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = self.self_norm(x + self.dropout(self.self_attn(x, (k, v), mask=mask, is_causal=is_causal)))
        if cross_kv is not None:  # None: the contrastive pass reads the text alone
            x = self.cross_norm(x + self.dropout(self.cross_attn(x, cross_kv, mask=cross_mask, group=group)))
        x = self.adaptor(x)
        return self.ffn(x), (k, v)


class LMHead(nn.Module):
    """RoBERTa's MLM head; the output projection is the (tied) word embedding matrix."""

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.dense = nn.Linear(spec.hidden, spec.hidden)
        self.norm = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(spec.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over the vocabulary, or over its ``rows`` only (the decoder's output vocabulary)."""
        weight, bias = (word_embeddings, self.bias) if rows is None else (word_embeddings[rows], self.bias[rows])
        return linear(self.norm(F.gelu(self.dense(hidden))), weight, bias)


class TextDecoder(nn.Module):
    def __init__(self, spec: DecoderSpec, vision_width: int, adaptor_ratio: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        adaptor_hidden = max(1, round(spec.hidden * adaptor_ratio))
        self.embed = TextEmbeddings(spec)
        self.layers = nn.ModuleList(DecoderLayer(spec, vision_width, adaptor_hidden) for _ in range(spec.layers))
        self.lm_head = LMHead(spec)
        self._init_like_bert()
        # The output vocabulary (spec.output_vocabulary): its ids, and each vocabulary id's place
        # in it (-1: not written). Not saved with the weights: the checkpoint's spec holds the ids.
        ids = spec.output_ids
        self.register_buffer("output_ids", None if ids is None else torch.tensor(ids), persistent=False)
        index = None
        if ids is not None:
            index = torch.full((spec.vocab_size,), -1, dtype=torch.long)
            index[self.output_ids] = torch.arange(len(ids))
        self.register_buffer("output_index", index, persistent=False)

    def _init_like_bert(self) -> None:
        """BERT's initialisation (normal, std 0.02) for a decoder trained from scratch, queries and
        keys as ``spec.attention_init`` says; loading pre-trained weights overwrites it. Adaptors
        keep their zero start."""
        for name, module in self.named_modules():
            if ".adaptor" in name:
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        if self.spec.attention_init == "fan_in":
            for layer in self.layers:
                for attention in (layer.self_attn, layer.cross_attn):
                    for projection in (attention.query, attention.key):
                        nn.init.normal_(projection.weight, std=projection.in_features ** -0.5)

    def start(self, vision_tokens: torch.Tensor, vision_mask: torch.Tensor | None = None) -> DecoderCache:
        """A cache holding the cross-attention keys/values of these images, computed once;
        ``vision_mask`` [B, T_vision] bool says which tokens may be read (None: all)."""
        cross_mask = None if vision_mask is None else vision_mask[:, None, None, :]
        return DecoderCache(cross=[layer.cross_attn.project_kv(vision_tokens) for layer in self.layers], cross_mask=cross_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: DecoderCache,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DecoderCache]:
        """Run new tokens [B, T] after those in ``cache``; return hidden states and the longer cache."""
        valid_new = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        valid = valid_new if cache.valid is None else torch.cat([cache.valid, valid_new], dim=1)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)[:, cache.length :]
        mask, is_causal = _self_attention_mask(valid, cache.length, input_ids.shape[1])
        x = self.embed(input_ids, positions)
        past = []
        for index, layer in enumerate(self.layers):
            previous = cache.past[index] if cache.past is not None else None
            x, kv = layer(x, cache.cross[index], previous, mask, is_causal, cache.cross_mask, cache.group)
            past.append(kv)
        return x, replace(cache, past=past, valid=valid)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """MaMMUT's contrastive pass: hidden states [N, T, H] of right-padded text rows with
        bidirectional self-attention over the real tokens and no cross-attention (no image)."""
        valid = attention_mask.bool()
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        mask = valid[:, None, None, :]
        x = self.embed(input_ids, positions)
        for layer in self.layers:
            x, _ = layer(x, None, None, mask, False)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary [..., V]; tokens outside the output vocabulary get -inf."""
        if self.output_ids is None:
            return self.lm_head(hidden, self.embed.tokens.weight)
        written = self.lm_head(hidden, self.embed.tokens.weight, self.output_ids)
        full = written.new_full((*written.shape[:-1], self.spec.vocab_size), float("-inf"))
        return full.index_copy_(-1, self.output_ids, written)

    def target_logits(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's logits [N, V_out] over the output vocabulary only, and ``targets`` [N] as
        places in it: the cross-entropy of the two is the full softmax's, without the columns of
        tokens the decoder never writes."""
        if self.output_ids is None:
            return self.lm_head(hidden, self.embed.tokens.weight), targets
        places = self.output_index[targets]
        if bool((places < 0).any()):
            outside = sorted(set(targets[places < 0].tolist()))[:5]
            raise PrismerError(f"target token ids {outside} are not in this decoder's output vocabulary "
                               f"(spec decoder.output_vocabulary, filled in from the training data it was built for)")
        return self.lm_head(hidden, self.embed.tokens.weight, self.output_ids), places


def _self_attention_mask(valid: torch.Tensor, past: int, new: int) -> tuple[torch.Tensor | None, bool]:
    """The causal self-attention mask, or None when SDPA's own causal flag (or nothing) will do.

    Right padding needs no mask: real tokens never look ahead at pads. Left padding (prompts of
    different lengths) does; every token may always see itself, so no row is fully masked.
    """
    right_padded = bool((valid[:, 1:] <= valid[:, :-1]).all()) if valid.shape[1] > 1 else True
    if right_padded and past == 0:
        return None, new > 1
    if right_padded and new == 1:
        return None, False
    key = torch.arange(valid.shape[1], device=valid.device)
    query = torch.arange(past, past + new, device=valid.device)[:, None]
    allowed = ((key <= query) & valid[:, None, :]) | (key == query)
    return allowed[:, None], False


# -- pre-trained weights -------------------------------------------------------------------

_HF_KEYS = [  # transformers RoBERTa/BERT (MLM) names -> ours; None: not used (tied or pooler)
    (r"embeddings\.word_embeddings\.", "embed.tokens."),
    (r"embeddings\.position_embeddings\.", "embed.positions."),
    (r"embeddings\.token_type_embeddings\.", "embed.token_types."),
    (r"embeddings\.LayerNorm\.", "embed.norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.self_attn.\2."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.self_norm."),
    (r"encoder\.layer\.(\d+)\.crossattention\.self\.(query|key|value)\.", r"layers.\1.cross_attn.\2."),
    (r"encoder\.layer\.(\d+)\.crossattention\.output\.dense\.", r"layers.\1.cross_attn.out."),
    (r"encoder\.layer\.(\d+)\.crossattention\.output\.LayerNorm\.", r"layers.\1.cross_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn.fc_in."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn.fc_out."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn.norm."),
    (r"(lm_head|cls\.predictions\.transform)\.dense\.", "lm_head.dense."),
    (r"(lm_head\.layer_norm|cls\.predictions\.transform\.LayerNorm)\.", "lm_head.norm."),
    (r"(lm_head|cls\.predictions)\.bias$", "lm_head.bias"),
    (r"(lm_head|cls\.predictions)\.decoder\.", None),
    (r"pooler\.", None),
]

_SHAPE_FIELDS = {  # spec field -> transformers config attribute
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "intermediate": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_positions": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
}


def _check_config(config, spec: DecoderSpec, source: str) -> None:
    """The spec must describe the weights that arrived: shapes, norm epsilon, position offset."""
    offsets = {"roberta": config.pad_token_id + 1, "bert": 0}  # RoBERTa counts positions after padding_idx
    if config.model_type not in offsets:
        raise PrismerError(f"decoder weights {source!r} are a {config.model_type!r} model; prismer reads roberta or bert")
    found = {theirs: getattr(config, theirs) for theirs in _SHAPE_FIELDS.values()}
    found.update(layer_norm_eps=config.layer_norm_eps, position_offset=offsets[config.model_type])
    for ours, theirs in {**_SHAPE_FIELDS, "layer_norm_eps": "layer_norm_eps", "position_offset": "position_offset"}.items():
        wanted = getattr(spec, ours)
        if (abs(found[theirs] - wanted) > 1e-3 * wanted) if ours == "layer_norm_eps" else found[theirs] != wanted:
            raise PrismerError(
                f"decoder weights {source!r} have {theirs}={found[theirs]} but the spec says decoder.{ours}={wanted}"
            )


def _our_key(hf_key: str, prefix: str) -> str | None:
    key = hf_key[len(prefix) + 1 :] if hf_key.startswith(prefix + ".") else hf_key
    for pattern, target in _HF_KEYS:
        if re.match(pattern, key):
            return None if target is None else re.sub(pattern, target, key, count=1)
    return None


def load_pretrained_decoder(decoder: TextDecoder, spec: DecoderSpec) -> list[str]:
    """Copy transformers weights (model id or local directory) into ``decoder``.

    Returns the names of our parameters that came from the checkpoint; the rest (adaptors,
    and cross-attention unless the checkpoint has it) keep their fresh initialisation.
    """
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    source = resolve_source(spec.weights)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights are newly initialised": expected, we add layers
    try:
        hf_model, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True)
    except Exception as exc:
        raise source_error("the decoder weights", source, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_config(hf_model.config, spec, source)
    fresh_in_source = set(info["missing_keys"])
    own = decoder.state_dict()
    converted = {}
    for hf_key, tensor in hf_model.state_dict().items():
        key = _our_key(hf_key, hf_model.base_model_prefix)
        if key is None or key not in own or hf_key in fresh_in_source or own[key].shape != tensor.shape:
            continue
        converted[key] = tensor
    decoder.load_state_dict(converted, strict=False)
    return sorted(converted)
