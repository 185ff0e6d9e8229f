"""The `seg` expert's segment-anything backend: SAM proposes masks, CLIP names them.

The SAM architecture is read from the checkpoint's tensor shapes (embedding width, depth,
heads, which blocks attend globally, image size, decoder width), so the official ViT-H/L/B
checkpoints and smaller ones built the same way all load through one path.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from prismer_core import SemanticMap

from ._models import load_state_dict
from .seg_common import SegOptions, clip_weights, masks_to_map, sam_checkpoint
from .vocabularies import SEGMENTATION_VOCABULARY

PROMPT = "a photo of a {}."


def build_sam(state: dict[str, Any]):
    """A segment-anything model shaped after ``state`` (a SAM state dict), with its weights."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    def count(prefix: str) -> int:
        return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})

    embed_dim, _, patch_size, _ = state["image_encoder.patch_embed.proj.weight"].shape
    grid = state["image_encoder.pos_embed"].shape[1]
    depth = count("image_encoder.blocks.")
    rel_pos = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
    global_blocks = [i for i, shape in enumerate(rel_pos) if shape[0] == 2 * grid - 1]
    windowed = [shape[0] for i, shape in enumerate(rel_pos) if i not in global_blocks]
    prompt_dim = state["image_encoder.neck.0.weight"].shape[0]
    image_size = grid * patch_size
    encoder = ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=image_size,
        mlp_ratio=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=embed_dim // rel_pos[0][1],
        patch_size=patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_blocks,
        window_size=(windowed[0] + 1) // 2 if windowed else 14,
        out_chans=prompt_dim,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        transformer=TwoWayTransformer(
            depth=count("mask_decoder.transformer.layers."),
            embedding_dim=prompt_dim,
            mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            num_heads=8,  # not visible in the shapes; every published SAM uses 8
        ),
        transformer_dim=prompt_dim,
        iou_head_depth=count("mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    )
    prompts = PromptEncoder(
        embed_dim=prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
    )
    sam = Sam(encoder, prompts, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    sam.load_state_dict(state)
    return sam.eval()


class SamClipSegmenter:
    """Masks from SAM's automatic mask generator, each named by CLIP over the vocabulary."""

    def __init__(self, options: SegOptions, device: str) -> None:
        import open_clip
        import torch
        from segment_anything import SamAutomaticMaskGenerator

        checkpoint, readiness = sam_checkpoint(options)
        weights, clip_readiness = clip_weights(options)
        if checkpoint is None or weights is None:
            raise RuntimeError(str(readiness if checkpoint is None else clip_readiness))
        self.device = device
        self.autocast = options.half and device.startswith("cuda")
        self.generator = SamAutomaticMaskGenerator(
            build_sam(load_state_dict(checkpoint)).to(device),
            points_per_side=options.points_per_side,
            pred_iou_thresh=options.pred_iou_thresh,
            stability_score_thresh=options.stability_score_thresh,
        )
        path, quick_gelu = weights
        local_dir = options.clip_model.startswith("local-dir:")
        self.clip, _, self.preprocess = open_clip.create_model_and_transforms(
            options.clip_model,
            pretrained=None if local_dir else str(path),
            force_quick_gelu=quick_gelu,
            require_pretrained=True,
            precision="fp16" if self.autocast else "fp32",
            device=device,
        )
        self.clip.eval()
        self.names = list(SEGMENTATION_VOCABULARY)
        tokenizer = open_clip.get_tokenizer(options.clip_model)
        with torch.inference_mode():
            tokens = tokenizer([PROMPT.format(name) for name in self.names]).to(device)
            self.text = self.clip.encode_text(tokens, normalize=True)

    def predict(self, images: Sequence[np.ndarray]) -> list[SemanticMap]:
        import torch

        outputs = []
        for image in images:  # the mask generator takes one image at a time
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
                proposals = self.generator.generate(image)
            masks = [proposal["segmentation"] for proposal in proposals]
            boxes = [proposal["bbox"] for proposal in proposals]
            outputs.append(masks_to_map(image.shape[0], image.shape[1], masks, self.classify(image, masks, boxes)))
        return outputs

    def classify(self, image: np.ndarray, masks: Sequence[np.ndarray], boxes: Sequence[Sequence[float]]) -> list[str]:
        """CLIP's best vocabulary name for each mask, seen as its box crop with the rest greyed."""
        import torch
        from PIL import Image

        if not masks:
            return []
        crops = []
        for mask, (x, y, w, h) in zip(masks, boxes):
            x0, y0 = int(x), int(y)
            x1, y1 = max(x0 + 1, int(np.ceil(x + w))), max(y0 + 1, int(np.ceil(y + h)))
            crop = image[y0:y1, x0:x1].copy()
            crop[~mask[y0:y1, x0:x1]] = 127
            crops.append(self.preprocess(Image.fromarray(crop)))
        batch = torch.stack(crops).to(self.device, dtype=self.text.dtype)
        with torch.inference_mode():
            features = self.clip.encode_image(batch, normalize=True)
        best = (features @ self.text.T).argmax(dim=-1).cpu().tolist()
        return [self.names[i] for i in best]
