"""Tiny, randomly initialised models saved the way real weights are published, for the expert
tests: each expert then loads them through its own loading code, offline.

Every builder writes into a folder and returns the path a user would configure.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

from prismer_experts.vocabularies import ADE20K_CLASSES, COCO_CLASSES

def photo(size: tuple[int, int] | None = None) -> np.ndarray:
    """A real photograph: the bus picture that ships with ultralytics (a test dependency)."""
    package = Path(importlib.util.find_spec("ultralytics").origin).parent  # found without importing it
    image = Image.open(package / "assets" / "bus.jpg").convert("RGB")
    if size is not None:
        image = image.resize(size)
    return np.asarray(image)


def depth_anything(folder: Path) -> Path:
    """A Depth Anything model (DINOv2 backbone, DPT head) and its aspect-keeping processor,
    as `save_pretrained` writes them."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=56,
        patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
        reassemble_hidden_size=32, patch_size=14,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14, do_pad=False,
    ).save_pretrained(folder)
    return folder


def mask2former_ade(folder: Path) -> Path:
    """A Mask2Former semantic segmentation model over the ADE20K classes (Hugging Face spellings)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig

    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    names = {i: name for i, name in enumerate(ADE20K_CLASSES)}
    names[7] = "bed "  # as the hub's ADE20K label file spells it
    config = Mask2FormerConfig(
        backbone_config=backbone, hidden_dim=32, num_queries=8, encoder_layers=1, decoder_layers=2,
        num_attention_heads=2, encoder_feedforward_dim=64, dim_feedforward=64, mask_feature_size=32, feature_size=32,
        id2label=names, label2id={v: k for k, v in names.items()},
    )
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=32).save_pretrained(folder)
    return folder


def sam_checkpoint(path: Path) -> Path:
    """A segment-anything model with a small image encoder (256 px) and decoder, saved as the
    official checkpoints are: a plain state dict in a .pth file."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    width = 32
    sam = Sam(
        ImageEncoderViT(
            depth=2, embed_dim=32, img_size=256, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=4,
            out_chans=width,
        ),
        PromptEncoder(embed_dim=width, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=8),
        MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=width, mlp_dim=64, num_heads=8),
            transformer_dim=width, iou_head_depth=3, iou_head_hidden_dim=16,
        ),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    torch.save(sam.state_dict(), path)
    return path


def open_clip_dir(folder: Path) -> str:
    """A tiny CLIP in open_clip's local-dir layout; returns the ``local-dir:`` model name."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    model = open_clip.CLIP(**config)
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def yolo_checkpoint(path: Path) -> Path:
    """YOLOv8n built from its yaml (random weights) with COCO class names, saved as a .pt."""
    from prismer_experts.objdet import import_yolo

    YOLO = import_yolo()

    model = YOLO("yolov8n.yaml")
    model.model.names = dict(enumerate(COCO_CLASSES))
    model.save(str(path))
    return path


def hed_weights(path: Path) -> Path:
    """The HED network with random weights, as a safetensors file."""
    import torch
    from safetensors.torch import save_file

    from prismer_experts.hed import HedNet

    torch.manual_seed(0)
    save_file(HedNet().state_dict(), str(path))
    return path


def marigold_normals(folder: Path) -> Path:
    """A Marigold normals pipeline (diffusers) with tiny UNet, VAE and CLIP text encoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldNormalsPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = folder / "vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    (vocab / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (vocab / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), model_max_length=8)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=2, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=32,
    )
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    scheduler = DDIMScheduler(
        prediction_type="v_prediction", timestep_spacing="trailing", beta_schedule="scaled_linear",
        beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
    )
    pipeline = MarigoldNormalsPipeline(
        unet=unet, vae=vae, scheduler=scheduler, text_encoder=text, tokenizer=tokenizer,
        prediction_type="normals", default_denoising_steps=1, default_processing_resolution=32,
    )
    pipeline.save_pretrained(folder)
    return folder
