"""Small expert sets, batches and local backbone weights shared by the model and checkpoint tests."""

from __future__ import annotations

from pathlib import Path

import torch

from prismer_core.inputs import ModelInputs

from prismer_core.experts.contract import ExpertKind, ExpertSpec
from prismer_core.specs import load_spec

#: The paper's six experts, as the model sees them (kind, channels, instances).
SIX = {
    "depth": ExpertSpec("depth", "1.0", ExpertKind.DENSE, channels=1),
    "normal": ExpertSpec("normal", "1.0", ExpertKind.DENSE, channels=3),
    "edge": ExpertSpec("edge", "1.0", ExpertKind.DENSE, channels=1),
    "seg": ExpertSpec("seg", "1.0", ExpertKind.SEMANTIC, vocabulary=("sky", "road")),
    "objdet": ExpertSpec("objdet", "1.0", ExpertKind.SEMANTIC, vocabulary=("car",), has_instances=True),
    "ocr": ExpertSpec("ocr", "1.0", ExpertKind.SEMANTIC, open_vocabulary=True, has_instances=True),
}


def experts(*names: str) -> dict[str, ExpertSpec]:
    return {name: SIX[name] for name in names}


def small_spec(**overrides):
    """The tiny spec at 64 px (a 4×4 patch grid), so tests run in moments."""
    return load_spec("tiny", {"image_size": 64, **overrides})


def make_batch(model, batch_size: int = 2, seed: int = 0) -> ModelInputs:
    """Random RGB and expert maps with a few rectangular instances, shaped as the model expects."""
    generator = torch.Generator().manual_seed(seed)
    size = model.image_size
    maps, instances, tables = {}, {}, {}
    rgb = torch.randn(batch_size, 3, size, size, generator=generator)
    for name, expert in model.expert_specs.items():
        if expert.is_semantic:  # label ids into each sample's table of 5 label embeddings
            maps[name] = torch.randint(0, 5, (batch_size, size, size), generator=generator, dtype=torch.int32)
            tables[name] = torch.rand(batch_size, 5, model.spec.semantic_channels, generator=generator) * 2 - 1
        else:
            maps[name] = torch.rand(batch_size, expert.channels, size, size, generator=generator) * 2 - 1
        if expert.has_instances:
            ids = torch.zeros(batch_size, size, size, dtype=torch.long)
            ids[:, : size // 2, : size // 2] = 1
            ids[:, size // 2 :, size // 4 :] = 2
            instances[name] = ids
    return ModelInputs(rgb, maps, instances, label_tables=tables)


def save_tiny_backbones(folder: Path, image_size: int = 64) -> tuple[Path, Path]:
    """A tiny open_clip CLIP (safetensors file) and a tiny transformers RoBERTa decoder with
    cross-attention (save_pretrained folder), both randomly initialised, as users' local
    weights would be. Returns (clip file, roberta folder)."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import RobertaConfig, RobertaForCausalLM

    from prismer_core.model.vision import register_bundled_configs

    register_bundled_configs()
    torch.manual_seed(1)
    clip = open_clip.create_model("prismer-tiny-vit", pretrained=None, force_image_size=image_size)
    clip_file = folder / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_file))
    config = RobertaConfig(
        vocab_size=30522, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
        intermediate_size=768, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
        is_decoder=True, add_cross_attention=True,
    )
    roberta_dir = folder / "tiny_roberta"
    RobertaForCausalLM(config).save_pretrained(roberta_dir)
    return clip_file, roberta_dir


def spec_with_local_backbones(clip_file: Path, roberta_dir: Path, **overrides):
    """The tiny spec pointed at local weights the way a user points base at real ones (with
    the pre-trained tower's own patch embedding and no reconstruction head, as base has)."""
    return small_spec(**{
        "vision.pretrained": str(clip_file),
        "vision.rgb_stem": "patch",
        "reconstruction.weight": 0.0,
        "decoder.weights": str(roberta_dir),
        "decoder.pad_token_id": 1,
        "decoder.position_offset": 2,
        "decoder.max_positions": 514,
        "decoder.layer_norm_eps": 1e-5,
        "frozen": ["vision.backbone", "decoder.backbone"],
        **overrides,
    })
