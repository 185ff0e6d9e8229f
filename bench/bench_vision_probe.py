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

Images are resized (bicubic) and normalised as the spec says, with no augmentation. Results:
docs/benchmarks.md, issue 13, "Session 4".
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
    args = parser.parse_args()
    spec = seeded_tiny_spec(args)
    if args.encoder_from is not None:
        if args.set:
            raise PrismerError("--encoder-from uses the checkpoint's spec: leave out --set")
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


if __name__ == "__main__":
    run_main(main)
