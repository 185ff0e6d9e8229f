"""Images per second of each built-in expert on this machine, at 224 and 384 pixels.

No pre-trained weights can be fetched here, so experts that need them run a model of the
real architecture and size with random weights, built from its configuration, saved, and
loaded through the expert's own loading code. The arithmetic is that of the real model;
steps whose cost depends on what the model finds (how many masks or boxes survive the
filters, how many text boxes OCR reads) may cost more or less with real weights. The table
says which model each row ran.

    .venv/bin/python bench/bench_experts.py [--images 4] [--batch 4] [--device cpu] [--only seg-sam,...]

``--device cuda`` times them on a GPU (bench/gpu_check.sh: depth, seg-mask2former, objdet).

Prints a markdown table (paste it into docs/benchmarks.md with the machine and date).
Only the expert's own predict() is timed: a dependency (depth, for normal) runs before the
clock starts, and loading and one warm-up batch are not counted (segment-anything, at minutes
per image on a CPU, is timed on one image without a warm-up).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = (224, 384)


def photos(size: int, count: int) -> list[np.ndarray]:
    """Real photographs (ultralytics' bus and zidane pictures), resized to size×size."""
    import importlib.util

    assets = Path(importlib.util.find_spec("ultralytics").origin).parent / "assets"
    pictures = [Image.open(assets / name).convert("RGB") for name in ("bus.jpg", "zidane.jpg")]
    return [np.asarray(pictures[i % 2].resize((size, size), Image.BICUBIC)) for i in range(count)]


def depth_anything_v2_small(folder: Path) -> str:
    """Depth Anything V2 Small's architecture (DINOv2-S backbone, 24.8M parameters), random."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14,
        out_indices=[3, 6, 9, 12], reshape_hidden_states=False, apply_layernorm=True,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64,
        head_hidden_size=32, reassemble_hidden_size=384, patch_size=14,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_pad=False,
    ).save_pretrained(folder)
    return str(folder)


def mask2former_swin_tiny_ade(folder: Path) -> str:
    """Mask2Former with a Swin-T backbone and 150 ADE20K classes (47M parameters), random."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig

    from prismer_experts.vocabularies import ADE20K_CLASSES

    backbone = SwinConfig(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    names = dict(enumerate(ADE20K_CLASSES))
    config = Mask2FormerConfig(backbone_config=backbone, id2label=names, label2id={v: k for k, v in names.items()})
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 512, "longest_edge": 2048}, size_divisor=32).save_pretrained(folder)
    return str(folder)


def sam_vit_b(path: Path) -> str:
    """segment-anything ViT-B (the architecture of sam_vit_b_01ec64.pth, 94M parameters), random."""
    import torch
    from segment_anything import sam_model_registry

    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return str(path)


def clip_vit_b16(folder: Path) -> str:
    """open_clip ViT-B-16 (150M parameters), random, in open_clip's local-dir layout."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = open_clip.get_model_config("ViT-B-16")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    save_file(open_clip.create_model("ViT-B-16").state_dict(), str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def yolo11n(path: Path) -> str:
    """YOLO11n (2.6M parameters) built from its yaml, random, with COCO class names."""
    from ultralytics import YOLO

    from prismer_experts.vocabularies import COCO_CLASSES

    model = YOLO("yolo11n.yaml")
    model.model.names = dict(enumerate(COCO_CLASSES))
    model.save(str(path))
    return str(path)


def hed(path: Path) -> str:
    """The HED network of the edge expert (14.7M parameters), random."""
    import torch
    from safetensors.torch import save_file

    from prismer_experts.hed import HedNet

    torch.manual_seed(0)
    save_file(HedNet().state_dict(), str(path))
    return str(path)


class Weights:
    """Each model built on first use, once, into ``root`` (several cases share one)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @cached_property
    def hed(self) -> str:
        return hed(self.root / "hed.safetensors")

    @cached_property
    def depth(self) -> str:
        return depth_anything_v2_small(self.root / "depth")

    @cached_property
    def mask2former(self) -> str:
        return mask2former_swin_tiny_ade(self.root / "seg")

    @cached_property
    def sam(self) -> str:
        return sam_vit_b(self.root / "sam_vit_b.pth")

    @cached_property
    def clip(self) -> str:
        return clip_vit_b16(self.root / "clip")

    @cached_property
    def yolo(self) -> str:
        return yolo11n(self.root / "yolo11n.pt")


class TinyWeights(Weights):
    """The test suite's tiny models (tests/expert_models.py) in place of the real-size ones: the
    same loading and predict code in seconds, to check this script end to end
    (``--tiny``, bench/gpu_check.sh --dry-run). Their rates mean nothing."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import expert_models

        self.models = expert_models

    @cached_property
    def hed(self) -> str:
        return str(self.models.hed_weights(self.root / "hed.safetensors"))

    @cached_property
    def depth(self) -> str:
        return str(self.models.depth_anything(self.root / "depth"))

    @cached_property
    def mask2former(self) -> str:
        return str(self.models.mask2former_ade(self.root / "seg"))

    @cached_property
    def sam(self) -> str:
        return str(self.models.sam_checkpoint(self.root / "sam.pth"))

    @cached_property
    def clip(self) -> str:
        return self.models.open_clip_dir(self.root / "clip")

    @cached_property
    def yolo(self) -> str:
        return str(self.models.yolo_checkpoint(self.root / "yolov8n.pt"))


#: (case id, expert, what ran, settings given the weights)
CASES: list[tuple[str, str, str, Callable[[Weights], dict]]] = [
    ("edge-canny", "edge", "Canny (OpenCV), no weights", lambda w: {}),
    ("edge-hed", "edge", "HED, real size, random weights", lambda w: {"edge": {"backend": "hed", "model": w.hed}}),
    ("ocr", "ocr", "rapidocr PP-OCRv4, real weights (shipped)", lambda w: {}),
    ("depth", "depth", "Depth Anything V2 Small architecture, random weights", lambda w: {"depth": {"model": w.depth}}),
    ("normal", "normal", "geometric from depth (depth itself not timed)", lambda w: {"depth": {"model": w.depth}}),
    ("seg-mask2former", "seg", "Mask2Former Swin-T ADE20K architecture, random weights",
     lambda w: {"seg": {"model": w.mask2former}}),
    ("seg-sam", "seg", "SAM ViT-B architecture, random weights, 16×16 prompts (the default 32×32 has 4× "
     "the decoder work); CLIP names only the masks that pass the quality filters",
     lambda w: {"seg": {"backend": "sam", "sam_checkpoint": w.sam, "clip_model": w.clip, "points_per_side": "16"}}),
    ("seg-sam-naming", "seg", "CLIP ViT-B-16 architecture, random weights, naming 32 masks per image",
     lambda w: {"seg": {"backend": "sam", "sam_checkpoint": w.sam, "clip_model": w.clip}}),
    ("objdet", "objdet", "YOLO11n architecture, random weights, 640 px inference",
     lambda w: {"objdet": {"model": w.yolo, "min_score": "0.001"}}),
]


def measure(
    expert_name: str, settings: dict, images: list[np.ndarray], batch: int, device: str,
    naming: bool = False, warm_up: bool = True,
) -> float:
    """Images per second of ``expert_name``.predict over ``images`` in batches of ``batch``."""
    from prismer_core.runner import ExpertRunner

    runner = ExpertRunner([expert_name], device=device, settings=settings)
    runner.load()
    expert = runner.experts[expert_name]
    if naming:
        return measure_naming(expert.backend, images)
    dependencies = [name for name in runner.order if name != expert_name]

    def context(chunk: list[np.ndarray]) -> dict:
        return {name: runner.experts[name].predict(chunk, {}) for name in dependencies}

    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    contexts = [context(chunk) for chunk in chunks]
    if warm_up:
        expert.predict(chunks[0], contexts[0])  # lazy initialisation, caches
    start = time.perf_counter()
    for chunk, ctx in zip(chunks, contexts):
        expert.predict(chunk, ctx)
    return len(images) / (time.perf_counter() - start)


def measure_naming(segmenter, images: list[np.ndarray], masks_per_image: int = 32) -> float:
    """Images per second of the SAM backend's CLIP naming alone, for a 4×8 grid of masks."""
    height, width = images[0].shape[:2]
    masks, boxes = [], []
    for row in range(4):
        for col in range(masks_per_image // 4):
            mask = np.zeros((height, width), bool)
            y0, y1 = row * height // 4, (row + 1) * height // 4
            x0, x1 = col * width // 8, (col + 1) * width // 8
            mask[y0:y1, x0:x1] = True
            masks.append(mask)
            boxes.append((x0, y0, x1 - x0, y1 - y0))
    segmenter.classify(images[0], masks, boxes)  # warm-up
    start = time.perf_counter()
    for image in images:
        segmenter.classify(image, masks, boxes)
    return len(images) / (time.perf_counter() - start)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{datetime.date.today()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load:.1f} at the start"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images timed per expert and size")
    parser.add_argument("--batch", type=int, default=4, help="images per predict() call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="", help="comma-separated case ids (default: all)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="image sizes, comma-separated")
    parser.add_argument("--tiny", action="store_true",
                        help="the test suite's tiny models instead of real-size ones (checks the script; rates mean nothing)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    os.environ.setdefault("YOLO_OFFLINE", "1")

    only = {c for c in args.only.split(",") if c}
    print(f"Machine: {machine()}\n", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="prismer-bench-") as tmp:
        weights = (TinyWeights if args.tiny else Weights)(Path(tmp))
        for case, expert, what, settings in CASES:
            if only and case not in only:
                continue
            slow = case == "seg-sam"  # minutes per image on a CPU: one image, no warm-up
            count = 1 if slow else args.images
            rates = [
                measure(expert, settings(weights), photos(size, count), min(args.batch, count), args.device,
                        naming=case == "seg-sam-naming", warm_up=not slow)
                for size in sizes
            ]
            rows.append((case, "tests/expert_models.py's tiny model (the rate means nothing)" if args.tiny else what, count, rates))
            print(f"{case}: " + ", ".join(f"{r:.3g} img/s" for r in rates), file=sys.stderr)
    print(f"| expert | model run | images | {' | '.join(f'{s}×{s} img/s' for s in sizes)} |")
    print("|---|---|---|" + "---|" * len(sizes))
    for case, what, count, rates in rows:
        print(f"| {case} | {what} | {count} | {' | '.join(f'{r:.3g}' for r in rates)} |")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "device": args.device, "tiny": args.tiny, "batch": args.batch,
            "rows": [{"case": case, "model": what, "images": count, "images_per_s": dict(zip(map(str, sizes), rates))}
                     for case, what, count, rates in rows],
        }, indent=2))


if __name__ == "__main__":
    main()
