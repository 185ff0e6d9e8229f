"""The vision encoder: a Vision Transformer (from open_clip or timm) that also reads the experts.

The spec names the tower as data: an open_clip model (``vision.open_clip_model``, the paper's
pre-trained CLIP towers) or a timm one (``vision.timm_model`` with ``vision.timm_options``,
e.g. a small ViT trained from scratch). RGB enters through the backbone's own patch embedding
(with its class token, so that at initialisation the encoder reproduces a pre-trained ViT
exactly), or, with ``vision.rgb_stem: conv``, through early convolutions that end in the patch
grid (see :func:`conv_patch_embedding`). Each expert map
goes through its own stem; all expert tokens get the shared positional embedding (resized to
the stem grid when it differs) and are summarised by the Experts Resampler. The transformer
then runs on ``[class ; RGB tokens ; latents]``, with an adaptor after every attention; with
``resampler.rgb_attends_latents: false`` the RGB tokens do not attend to the latents (the
latents still read them), so the RGB tokens come out exactly as the backbone alone makes them.

A sample may lack some experts' maps (``present``, from expert dropout in training or a
checkpoint run without an expert it was trained with): the resampler then does not attend to
those tokens at all. A sample that lacks every map has latents that summarise nothing, so
no other token attends to them, in the ViT or in the decoder (:meth:`VisionEncoder.vision_mask`):
such a sample is read from RGB alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrismerError
from ..experts.contract import ExpertSpec
from ..specs import ModelSpec, data_dir, source_error
from .layers import Adaptor
from .packed import linear
from .resampler import ExpertsResampler
from .stems import ExpertStem, LabelMap, conv_stack, stem_grid


@lru_cache(maxsize=1)
def register_bundled_configs() -> None:
    """Make the open_clip model configs in ``specs/open_clip/`` known to open_clip by name."""
    import open_clip

    open_clip.add_model_config(data_dir() / "open_clip")


def load_vision_tower(spec: ModelSpec, device: str | torch.device = "cpu") -> nn.Module:
    """The ViT the spec names (open_clip or timm), with weights from its tag or file.

    On the meta device nothing is loaded or allocated: only the shapes are built.
    """
    meta = torch.device(device).type == "meta"
    pretrained = None if meta else spec.vision.pretrained
    name = spec.vision.tower_name
    try:
        with torch.device("meta") if meta else nullcontext(), _quiet_random_init():
            if spec.vision.timm_model:
                tower = _timm_tower(spec, pretrained, device)
            else:
                tower = _open_clip_tower(spec, pretrained, device)
    except PrismerError:
        raise
    except Exception as exc:  # the libraries raise RuntimeError/ValueError/OSError/KeyError for a bad name, tag or file
        what = f"the vision tower {name!r}" + (" with weights" if pretrained else "")
        raise source_error(what, pretrained or name, exc) from None
    _check_supported(tower, name)
    return tower


def _open_clip_tower(spec: ModelSpec, pretrained: str | None, device: str | torch.device) -> nn.Module:
    import open_clip

    register_bundled_configs()
    clip = open_clip.create_model(spec.vision.open_clip_model, pretrained=pretrained, force_image_size=spec.image_size,
                                  device=device)
    return clip.visual


def _timm_tower(spec: ModelSpec, pretrained: str | None, device: str | torch.device) -> nn.Module:
    """``timm.create_model(name, img_size=spec.image_size, num_classes=0, **timm_options)``;
    ``pretrained`` is a timm tag (``True`` in YAML is not accepted: say which weights) or a
    local file, read by timm's own loader (``pretrained_cfg_overlay=dict(file=...)``)."""
    import timm

    options = dict(spec.vision.timm_options)
    options.setdefault("num_classes", 0)
    weights: dict = {}
    if pretrained:
        local = Path(pretrained).expanduser()
        weights = {"pretrained": True}
        if local.suffix or local.exists():
            weights["pretrained_cfg_overlay"] = {"file": str(local)}
    tower = timm.create_model(spec.vision.timm_model, img_size=spec.image_size, **weights, **options)
    return tower.to(device)


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Hide open_clip's 'initialized randomly' warning: a spec without weights asks for that."""
    root = logging.getLogger()

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _check_supported(tower: nn.Module, name: str) -> None:
    """Only plain ViTs are supported: a class token, absolute positions, standard blocks."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    problem = None
    if isinstance(tower, VisionTransformer):
        if tower.attn_pool is not None or not tower.transformer.batch_first:
            problem = "it uses attentional pooling or sequence-first blocks"
        elif not all(type(block) is ResidualAttentionBlock for block in tower.transformer.resblocks):
            problem = "it uses custom attention blocks"
        elif not all(block.attn._qkv_same_embed_dim and block.attn.in_proj_bias is not None
                     for block in tower.transformer.resblocks):
            problem = "its attention has separate or bias-free projections"
    elif _is_timm_vit(tower):
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        if tower.cls_token is None or tower.reg_token is not None or tower.no_embed_class or tower.pos_embed is None:
            problem = "it needs exactly one class token and absolute positional embeddings that include it"
        elif type(tower.patch_embed) is not PatchEmbed or not isinstance(tower.patch_embed.norm, nn.Identity):
            problem = "its patch embedding is not a plain convolution (hybrid or normalised embeddings)"
        elif tower.dynamic_img_size or not all(type(block) is Block for block in tower.blocks):
            problem = "it uses dynamic image sizes or custom blocks"
    else:
        problem = f"its vision tower is a {type(tower).__name__}, not an open_clip or timm VisionTransformer"
    if problem:
        raise PrismerError(f"vision tower {name!r} is not supported: {problem}")


def _is_timm_vit(tower: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return False
    return isinstance(tower, VisionTransformer)


def _self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's attention with its own weights, on SDPA directly: nn.MultiheadAttention's
    general path (layout transposes) made a frozen ViT's forward+backward about 25% slower."""
    q, k, v = linear(x, attn.in_proj_weight, attn.in_proj_bias).unflatten(-1, (3, attn.num_heads, -1)).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn.dropout if attn.training else 0.0)
    return attn.out_proj(out.transpose(1, 2).flatten(2))


def _timm_attention(attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return attn(x, attn_mask=mask)


def _one_way_mask(rgb_tokens: int, latents: int, device: torch.device) -> torch.Tensor:
    """Attention mask (True: may attend) in which the latents read every token but the class
    and RGB tokens read only each other, so they stay exactly what the backbone makes of RGB."""
    mask = torch.ones(rgb_tokens + latents, rgb_tokens + latents, dtype=torch.bool, device=device)
    mask[:rgb_tokens, rgb_tokens:] = False
    return mask


def conv_patch_embedding(patch_size: int, width: int) -> tuple[nn.Sequential, nn.Conv2d]:
    """Early convolutions in place of the patchify layer (Xiao et al., "Early Convolutions Help
    Transformers See Better", 2021): 3×3 convolutions of stride 2, GroupNorm and ReLU, widths
    doubling, until the patch grid, then a 3×3 projection to the ViT width. The dense expert
    stems are the same stack (:func:`prismer_core.model.stems.conv_stack`). Returns the stack
    before the projection, and the projection (the encoder's ``patch_embed``)."""
    downsamplings = patch_size.bit_length() - 1
    if patch_size < 2 or 2**downsamplings != patch_size:
        raise PrismerError(f"vision.rgb_stem conv needs a patch size that is a power of two, got {patch_size}")
    layers = conv_stack(3, width, downsamplings)
    return nn.Sequential(*layers[:-1]), layers[-1]


@contextmanager
def _own_random_stream() -> Iterator[None]:
    """Initialise what is built inside from a generator of its own (seeded by one draw from the
    global one), so that adding or removing experts leaves every other weight's initialisation
    unchanged: a run with experts and its PrismerZ twin of the same seed share their start."""
    seed = int(torch.randint(2**31 - 1, (1,), device="cpu").item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class VisionEncoder(nn.Module):
    def __init__(self, spec: ModelSpec, experts: Mapping[str, ExpertSpec], tower: nn.Module) -> None:
        super().__init__()
        self.image_size = spec.image_size
        # Taken over from the tower; its pooling, head (and CLIP's text tower) are dropped.
        if _is_timm_vit(tower):
            self.patch_embed = tower.patch_embed.proj
            self.grid = tower.patch_embed.grid_size[0]
            self.class_embedding = tower.cls_token  # [1, 1, width]
            self.positional_embedding = tower.pos_embed  # [1, 1 + grid², width]
            self.ln_pre, self.blocks, self.ln_post = tower.norm_pre, tower.blocks, tower.norm
            self._branches = _timm_branches
        else:
            self.patch_embed = tower.conv1
            self.grid = tower.grid_size[0]
            self.class_embedding = tower.class_embedding  # [width]
            self.positional_embedding = tower.positional_embedding  # [1 + grid², width]
            self.ln_pre, self.blocks, self.ln_post = tower.ln_pre, tower.transformer.resblocks, tower.ln_post
            self._branches = _open_clip_branches
        self.width = self.patch_embed.out_channels
        self.rgb_stem: nn.Module | None = None
        self.patch_size = self.patch_embed.stride[0]
        if spec.vision.rgb_stem == "conv":
            self.rgb_stem, self.patch_embed = conv_patch_embedding(self.patch_size, self.width)
        hidden = max(1, round(self.width * spec.adaptor_ratio))
        self.adaptors = nn.ModuleList(Adaptor(self.width, hidden) for _ in self.blocks)
        with _own_random_stream():
            self.stems, self.resampler = self._expert_parts(spec, experts)
        self.stem_grid = stem_grid(spec.image_size)
        self.rgb_attends_latents = spec.resampler.rgb_attends_latents

    def _expert_parts(self, spec: ModelSpec, experts: Mapping[str, ExpertSpec]) -> tuple[nn.ModuleDict, ExpertsResampler | None]:
        stems = nn.ModuleDict(
            {
                name: ExpertStem(
                    spec.semantic_channels if expert.is_semantic else expert.channels,
                    self.width,
                    semantic=expert.is_semantic,
                    instance_slots=spec.instance_slots if expert.has_instances else 0,
                )
                for name, expert in sorted(experts.items())
            }
        )
        resampler = (
            ExpertsResampler(self.width, spec.resampler.latents, spec.resampler.layers, spec.resampler.heads)
            if experts
            else None
        )
        return stems, resampler

    @property
    def num_tokens(self) -> int:
        """Tokens out of the encoder: class + RGB patches (+ resampler latents)."""
        latents = self.resampler.latents.shape[0] if self.resampler is not None else 0
        return 1 + self.grid**2 + latents

    def forward(
        self,
        rgb: torch.Tensor,
        expert_maps: Mapping[str, torch.Tensor | LabelMap],
        instances: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """RGB [B, 3, S, S] and expert maps -> vision tokens [B, num_tokens, width].

        ``present``: per expert, [B] bool, which samples have its map (absent key: all do)."""
        if self.rgb_stem is None:
            features = rgb
        else:  # the pixels past the last whole patch are dropped, as the patchify layer drops them
            covered = self.grid * self.patch_size
            features = self.rgb_stem(rgb[..., :covered, :covered])
        x = self.patch_embed(features).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1), x], dim=1)
        x = x + self.positional_embedding.reshape(1, -1, self.width)
        mask = None
        if self.resampler is not None:
            latents = self.resampler(*self._expert_tokens(expert_maps, instances, present or {}, x))
            if not self.rgb_attends_latents:
                mask = _one_way_mask(x.shape[1], latents.shape[1], x.device)
            x = torch.cat([x, latents], dim=1)
            seen = self.vision_mask(present or {}, x.shape[0])
            if seen is not None:  # [B, T] keys -> [B, 1, T, T] with the one-way rule
                mask = seen[:, None, None, :] & (mask if mask is not None else True)
        x = self.ln_pre(x)
        for block, adaptor in zip(self.blocks, self.adaptors):
            attention, mlp = self._branches(block)
            x = x + attention(x, mask)
            x = adaptor(x)
            x = x + mlp(x)
        return self.ln_post(x)

    def _expert_tokens(
        self, maps: Mapping[str, torch.Tensor | LabelMap], instances: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor], x: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All experts' tokens [B, N, width] and which of them the resampler reads ([B, N]
        bool; None: all). An expert no sample has is left out rather than masked."""
        position = self._stem_positions()
        tokens, keep = [], []
        for name, stem in self.stems.items():
            here = present.get(name)
            if here is not None and not bool(here.any()):
                continue
            tokens.append(stem(maps[name], instances.get(name)) + position)
            keep.append(None if here is None or bool(here.all()) else here[:, None].expand(-1, tokens[-1].shape[1]))
        if not tokens:
            return x.new_zeros(x.shape[0], 0, x.shape[2]), None
        if all(k is None for k in keep):
            return torch.cat(tokens, dim=1), None
        ones = [torch.ones(t.shape[:2], dtype=torch.bool, device=t.device) if k is None else k for t, k in zip(tokens, keep)]
        return torch.cat(tokens, dim=1), torch.cat(ones, dim=1)

    def vision_mask(self, present: Mapping[str, torch.Tensor], batch: int) -> torch.Tensor | None:
        """Which vision tokens other tokens may attend to, [B, num_tokens] bool, or None (all):
        the latents of a sample that has no expert map at all summarise nothing and are hidden."""
        if self.resampler is None or set(self.stems) - set(present):
            return None  # some expert is present in every sample
        bare = ~torch.stack([present[name].to(torch.bool) for name in self.stems]).any(dim=0)
        if not bool(bare.any()):
            return None
        seen = torch.ones(batch, self.num_tokens, dtype=torch.bool, device=bare.device)
        seen[:, 1 + self.grid**2 :] = ~bare[:, None]
        return seen

    def _stem_positions(self) -> torch.Tensor:
        """The shared positional embedding (without the class slot) on the stems' grid."""
        grid_pos = self.positional_embedding.reshape(-1, self.width)[1:]
        if self.stem_grid == self.grid:
            return grid_pos
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(self.stem_grid, self.stem_grid), mode="bicubic", align_corners=False)
        return grid_pos.permute(0, 2, 3, 1).reshape(self.stem_grid**2, -1)


Branch = Callable[..., torch.Tensor]


def _open_clip_branches(block: nn.Module) -> tuple[Branch, Branch]:
    """The attention and MLP residual branches of an open_clip block (the adaptor sits between)."""
    return (lambda x, mask: block.ls_1(_self_attention(block.attn, block.ln_1(x), mask)),
            lambda x: block.ls_2(block.mlp(block.ln_2(x))))


def _timm_branches(block: nn.Module) -> tuple[Branch, Branch]:
    """The same for a timm ``Block`` (layer scale and drop-path included)."""
    return (lambda x, mask: block.drop_path1(block.ls1(_timm_attention(block.attn, block.norm1(x), mask))),
            lambda x: block.drop_path2(block.ls2(block.mlp(block.norm2(x)))))
