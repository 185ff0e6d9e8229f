"""Vision towers named in the spec as data: open_clip or timm ViTs, the patchify layer or early
convolutions for RGB, weights from a local file through the library's own loader."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from model_helpers import experts, make_batch
from prismer_core.errors import PrismerError
from prismer_core.inputs import ModelInputs
from prismer_core.model import build_model
from prismer_core.model.prismer import part_of
from prismer_core.model.vision import VisionEncoder, load_vision_tower
from prismer_core.specs import ModelSpecError, load_spec

OPEN_CLIP = {"vision.open_clip_model": "prismer-tiny-vit", "vision.timm_model": None, "vision.timm_options": {}}
TIMM = {"vision.open_clip_model": None, "vision.timm_model": "vit_tiny_patch16_224",
        "vision.timm_options": {"depth": 2, "patch_size": 8}}


def spec(tower: dict, **overrides):
    return load_spec("tiny", {"image_size": 32, **tower, **overrides})


@pytest.mark.parametrize("tower", [OPEN_CLIP, TIMM], ids=["open_clip", "timm"])
@pytest.mark.parametrize("rgb_stem", ["patch", "conv"])
def test_every_tower_and_stem_gives_tokens_that_differ_between_images(tower, rgb_stem):
    model = build_model(spec(tower, **{"vision.rgb_stem": rgb_stem}), experts("edge", "ocr")).eval()
    grid = 32 // (8 if tower is TIMM else 16)
    assert model.encoder.grid == grid and model.num_vision_tokens == 1 + grid**2 + 64
    with torch.no_grad():
        tokens = model.encode_images(make_batch(model, batch_size=3))
    assert tokens.shape == (3, model.num_vision_tokens, 192) and torch.isfinite(tokens).all()
    assert tokens[:, 1 : 1 + grid**2].std(0).mean() > 0.05  # each image its own tokens
    parts = {part_of(name) for name, _ in model.named_parameters() if name.startswith("encoder.blocks.")}
    assert parts == {"vision.backbone"}
    stem = [name for name, _ in model.named_parameters() if name.startswith("encoder.rgb_stem.")]
    assert bool(stem) is (rgb_stem == "conv") and {part_of(n) for n in stem} <= {"vision.embeddings"}


def test_a_conv_stem_ends_in_the_patch_grid_with_its_own_projection():
    model = build_model(spec(TIMM, **{"vision.rgb_stem": "conv"}), {})
    # 32 px → 16 → 8 → 4 through three stride-2 convolutions (patch 8), then a 3×3 projection to the width
    assert tuple(model.encoder.patch_embed.weight.shape) == (192, 96, 3, 3)
    strides = [m.stride[0] for m in model.encoder.rgb_stem if isinstance(m, torch.nn.Conv2d)]
    assert strides == [2, 2, 2]
    with pytest.raises(PrismerError, match="power of two, got 6"):
        build_model(spec(TIMM, **{"vision.rgb_stem": "conv", "vision.timm_options": {"depth": 1, "patch_size": 6}}), {})


def test_prismerz_with_a_timm_tower_is_that_vit_at_initialisation():
    """With the patchify stem, the encoder runs timm's own blocks: PrismerZ's tokens are what
    the timm model's ``forward_features`` gives (adaptors start as the identity)."""
    model_spec = spec(TIMM, **{"vision.rgb_stem": "patch"})
    tower = load_vision_tower(model_spec)
    rgb = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = tower.eval().forward_features(rgb)
        ours = VisionEncoder(model_spec, {}, tower).eval()(rgb, {}, {})
    assert torch.allclose(ours, reference, atol=1e-5)


def test_one_way_attention_keeps_timm_rgb_tokens_as_prismerz_makes_them():
    model_spec = spec(TIMM, **{"resampler.rgb_attends_latents": False})
    torch.manual_seed(0)
    prismerz = build_model(model_spec, {}).eval()
    torch.manual_seed(0)
    with_experts = build_model(model_spec, experts("edge")).eval()
    batch = make_batch(with_experts)
    with torch.no_grad():
        rgb_only = prismerz.encode_images(ModelInputs(batch.rgb))
        tokens = with_experts.encode_images(batch)
    assert torch.allclose(tokens[:, : rgb_only.shape[1]], rgb_only, atol=1e-5)


def test_timm_weights_load_from_a_local_file_through_timm(tmp_path):
    import timm

    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0, depth=2, patch_size=8)
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    model = build_model(spec(TIMM, **{"vision.pretrained": str(weights), "frozen": ["vision.backbone"], "vision.rgb_stem": "patch"}), {})
    ours = dict(model.named_parameters())
    assert torch.equal(ours["encoder.blocks.1.attn.qkv.weight"], source.blocks[1].attn.qkv.weight)
    assert torch.equal(ours["encoder.patch_embed.weight"], source.patch_embed.proj.weight)
    assert torch.equal(ours["encoder.positional_embedding"], source.pos_embed)
    assert "encoder.blocks.1.attn.qkv.weight" in model.pretrained_names
    with pytest.raises(PrismerError, match="cannot load the vision tower 'vit_tiny_patch16_224' with weights"):
        build_model(spec(TIMM, **{"vision.pretrained": str(tmp_path / "missing.safetensors")}), {})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({**TIMM, "vision.open_clip_model": "prismer-tiny-vit"}, "name exactly one vision tower"),
        ({**OPEN_CLIP, "vision.timm_options": {"depth": 2}}, "timm_options are for a timm_model"),
        ({**TIMM, "vision.timm_options": {"img_size": 64}}, "the image size is the spec's image_size"),
        ({**TIMM, "vision.rgb_stem": "convolutional"}, "vision.rgb_stem"),
    ],
)
def test_bad_tower_specs_name_the_field(overrides, message):
    with pytest.raises(ModelSpecError, match=message):
        load_spec("tiny", {"image_size": 32, **overrides})


@pytest.mark.parametrize(
    ("options", "message"),
    [({"depth": 1, "reg_tokens": 4}, "exactly one class token"), ({"depth": 1, "class_token": False, "global_pool": "avg"}, "exactly one class token")],
)
def test_timm_vits_the_encoder_cannot_run_are_refused_with_the_reason(options, message):
    with pytest.raises(PrismerError, match=f"vision tower 'vit_tiny_patch16_224' is not supported: .*{message}"):
        build_model(spec(TIMM, **{"vision.timm_options": options}), {})
    with pytest.raises(PrismerError, match="cannot load the vision tower 'no_such_vit'"):
        build_model(spec({**TIMM, "vision.timm_model": "no_such_vit"}), {})
