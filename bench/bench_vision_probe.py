"""How well a vision path can learn what the demo scenes show, with the language side taken out.

The tiny spec's vision encoder (:class:`prismer_core.model.vision.VisionEncoder`, PrismerZ:
RGB only, with whatever ``--set`` changes: image size, tower, stem, what is frozen) reads the
scenes of a `prismer data demo` folder; six learned queries, one per cell of the scenes' 3×2
grid, cross-attend to its tokens, and two linear heads name each cell's shape (or "empty") and
colour. Trained with cross-entropy on the truth the scenes record
(:func:`prismer_core.demo.scenes.scene_of`), it prints every ``--every`` steps the training
loss and the validation accuracy of shape and colour over the occupied cells: a ceiling on
what the decoder can read from these tokens, measured in a minute instead of a demo run, and a
training loss far below the validation error says the path memorises the 512 training scenes
instead of learning shapes.

    .venv/bin/python bench/bench_vision_probe.py --data demo_out/data --set image_size=64 \\
        --set 'frozen=[vision.backbone, vision.embeddings]'
    .venv/bin/python bench/bench_vision_probe.py --data D --set image_size=128 --set vision.rgb_stem=conv

``--encoder-from CHECKPOINT`` probes the encoder of a trained PrismerZ checkpoint instead (its
spec, its weights, all of it frozen: only the heads learn): what a run's training kept in the
vision tokens; probing a run's ``checkpoints/step-N`` folders in turn shows when it was lost.

``--pretrain OBJECTIVE --pretrain-steps N`` first trains the encoder with a self-supervised
objective alone (no language, no truth), then freezes it and probes it: a one-minute screen of
whether a signal of the tower's own makes the shapes readable, against the untrained tower
(``--pretrain none``). Objectives: ``recon``, the spec's pixel reconstruction
(:mod:`prismer_core.model.reconstruction`); ``masked``, the same with a quarter of the patches
painted over in the image's mean colour, the painted ones weighted double (MAE-like, the
neighbours must tell what was there); ``views``, reconstruction plus an image-level InfoNCE
between each image and a view with its colour channels permuted and brightness jittered
(SimCLR-like: the geometry must identify the image, the colour cannot); ``tokviews``, the same
contrast token by token (each token must find its twin at the same place in the other view).

Images are resized (bicubic) and normalised as the spec says, with no augmentation. Results:
docs/benchmarks.md, issue 13, "Session 4" and "Session 8".
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_oracle_decoder import run_main, seeded_tiny_spec, short_run_parser
from PIL import Image
from torch import nn


def main() -> None:
    from prismer_core.demo.scenes import scene_of
    from prismer_core.model.layers import MultiHeadAttention
    from prismer_core.checkpoint import resolve_checkpoint
    from prismer_core.errors import PrismerError
    from prismer_core.model.prismer import Prismer, build_model

    parser = short_run_parser(__doc__)
    parser.add_argument("--encoder-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="probe this PrismerZ checkpoint's encoder, frozen (its spec; --set is not allowed)")
    parser.add_argument("--pretrain", choices=["none", *OBJECTIVES], default="none",
                        help="train the encoder with this self-supervised objective first, then freeze it and probe it")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    args = parser.parse_args()
    spec = seeded_tiny_spec(args)
    if args.encoder_from is not None:
        if args.set:
            raise PrismerError("--encoder-from uses the checkpoint's spec: leave out --set")
        if args.pretrain != "none":
            raise PrismerError("--encoder-from probes a trained encoder as it is: leave out --pretrain")
        model = Prismer.from_pretrained(resolve_checkpoint(args.encoder_from), experts={})
        model.requires_grad_(False)
        spec = model.spec
    else:
        model = build_model(spec)
        model.apply_freezing()
    encoder, size, width = model.encoder, spec.image_size, model.encoder.width
    mean, std = torch.tensor(spec.image_mean).view(3, 1, 1), torch.tensor(spec.image_std).view(3, 1, 1)
    demo = json.loads((args.data / "demo.json").read_text())
    shapes = demo.get("options", {}).get("shapes") or ["circle", "square", "triangle", "star"]
    colours = demo.get("options", {}).get("colours") or ["red", "green", "blue", "yellow", "purple", "orange"]

    def scenes(split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, kinds, paints = [], [], []
        for line in (args.data / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "caption" not in row:
                continue
            picture = Image.open(args.data / row["image"]).convert("RGB").resize((size, size), Image.BICUBIC)
            images.append((torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255 - mean) / std)
            kind, paint = [0] * 6, [0] * 6
            for shape in scene_of(args.data, row["image"]).shapes:
                cell = shape.row * 3 + shape.column
                kind[cell], paint[cell] = 1 + shapes.index(shape.kind), 1 + colours.index(shape.colour)
            kinds.append(kind)
            paints.append(paint)
        return torch.stack(images), torch.tensor(kinds), torch.tensor(paints)

    class CellHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.queries = nn.Parameter(torch.randn(6, width) * 0.02)
            self.attention = MultiHeadAttention(width, 3)
            self.norm = nn.LayerNorm(width)
            self.shape = nn.Linear(width, 1 + len(shapes))
            self.colour = nn.Linear(width, 1 + len(colours))

        def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cells = self.norm(self.attention(self.queries.expand(len(tokens), -1, -1), self.attention.project_kv(tokens)))
            return self.shape(cells), self.colour(cells)

    train_x, train_kind, train_paint = scenes("train")
    val_x, val_kind, val_paint = scenes("val")
    if args.pretrain != "none":  # then only the heads learn, as with --encoder-from
        seconds = pretrain(encoder, args.pretrain, args.pretrain_steps, train_x, mean, std, args.batch_size, args.lr)
        print(json.dumps({"tag": args.tag, "pretrained": args.pretrain, "steps": args.pretrain_steps,
                          "seconds": round(seconds)}), flush=True)
        encoder.requires_grad_(False)
    heads = CellHeads()
    vision = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([*vision, *heads.parameters()], lr=args.lr, weight_decay=0.05)
    print(json.dumps({"tag": args.tag, "trainable_vision_parameters": sum(p.numel() for p in vision),
                      "vision_tokens": encoder.num_tokens}), flush=True)

    @torch.no_grad()
    def accuracy() -> dict[str, float]:
        encoder.eval()
        kind, paint = heads(encoder(val_x, {}, {}))
        encoder.train()
        occupied = val_kind > 0
        return {"shape": round(float((kind.argmax(-1) == val_kind)[occupied].float().mean()), 3),
                "colour": round(float((paint.argmax(-1) == val_paint)[occupied].float().mean()), 3)}

    start, window = time.perf_counter(), 0.0
    for step in range(1, args.steps + 1):
        rows = torch.tensor(random.sample(range(len(train_x)), args.batch_size))
        kind, paint = heads(encoder(train_x[rows], {}, {}))
        loss = F.cross_entropy(kind.flatten(0, 1), train_kind[rows].flatten()) + F.cross_entropy(paint.flatten(0, 1), train_paint[rows].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        window += loss.item()
        if step % args.every == 0:
            print(json.dumps({"tag": args.tag, "step": step, "train_loss": round(window / args.every, 3), **accuracy(),
                              "seconds": round(time.perf_counter() - start)}), flush=True)
            window = 0.0


OBJECTIVES = ("recon", "masked", "views", "tokviews")


def pretrain(encoder: nn.Module, objective: str, steps: int, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             batch_size: int, lr: float) -> float:
    """Train ``encoder`` for ``steps`` on ``images`` (normalised) with a self-supervised
    ``objective`` (see the module doc); returns the seconds it took."""
    from prismer_core.model.reconstruction import PixelReconstruction
    from prismer_core.specs import ReconstructionSpec

    grid, width = encoder.grid, encoder.width
    reconstruction = PixelReconstruction(ReconstructionSpec(weight=1.0), width)
    projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 64))
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([*trainable, *reconstruction.parameters(), *projection.parameters()], lr=lr, weight_decay=0.05)

    def patch_tokens(x: torch.Tensor) -> torch.Tensor:
        return encoder(x, {}, {})[:, 1 : 1 + grid**2]

    def recoloured(x: torch.Tensor) -> torch.Tensor:  # channels permuted, brightness ×0.8-1.2; geometry kept
        pixels = x * std + mean
        order = torch.stack([torch.randperm(3) for _ in range(len(x))])
        pixels = pixels[torch.arange(len(x))[:, None], order] * (0.8 + 0.4 * torch.rand(len(x), 1, 1, 1))
        return (pixels.clamp(0, 1) - mean) / std

    def info_nce(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(projection(a), dim=-1) @ F.normalize(projection(b), dim=-1).T / 0.1
        labels = torch.arange(len(a))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    start = time.perf_counter()
    for _ in range(steps):
        x = images[torch.tensor(random.sample(range(len(images)), batch_size))]
        if objective == "masked":
            painted = torch.rand(len(x), grid * grid) < 0.25
            size = x.shape[-1] // grid
            pixels = painted.view(len(x), 1, grid, 1, grid, 1).expand(-1, 1, -1, size, -1, size).reshape(len(x), 1, grid * size, grid * size)
            pixels = F.pad(pixels, (0, x.shape[-1] - grid * size, 0, x.shape[-2] - grid * size))
            tokens = patch_tokens(torch.where(pixels, x.mean((2, 3), keepdim=True), x))
            error = (reconstruction.head(tokens) - reconstruction.targets(x, grid)).pow(2).mean(-1)
            loss = error[painted].mean() + 0.5 * error[~painted].mean()
        else:
            tokens = patch_tokens(x)
            loss = reconstruction(tokens, x, grid)
            if objective == "views":
                loss = loss + info_nce(tokens.mean(1), patch_tokens(recoloured(x)).mean(1))
            elif objective == "tokviews":
                loss = loss + info_nce(tokens.flatten(0, 1), patch_tokens(recoloured(x)).flatten(0, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


if __name__ == "__main__":
    run_main(main)
