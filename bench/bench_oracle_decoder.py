"""How fast the decoder learns to answer from perfect vision tokens (issue 13's decoder check).

The tiny spec's decoder (:class:`prismer_core.model.decoder.TextDecoder`) and text codec are
trained on a `prismer data demo` folder's captions and questions, but instead of an encoder it
reads *oracle tokens*: one per cell of the scenes' 3×2 grid, the sum of fixed random
embeddings of the cell and of what it holds (colour, shape, printed word, or "empty"), drawn
from the scene's own record (:func:`prismer_core.demo.scenes.scene_of`). Whatever it fails to
answer is the decoder's and the schedule's, not the vision side's. Every ``--every`` steps it
prints the greedy accuracy (every answer token right, teacher-forced) per question type on
the validation split, and on 400 training questions (so memorising shows as a gap).

    .venv/bin/python bench/bench_oracle_decoder.py --data demo_out/data --steps 1000
    .venv/bin/python bench/bench_oracle_decoder.py --data D --set decoder.dropout=0 --set decoder.attention_init=fan_in

``--set FIELD=VALUE`` (YAML) overrides the tiny spec, as ``prismer train --spec-set`` does. The
optimiser is the trainer's (AdamW, weight decay on matrices, cosine schedule with 5% warm-up,
gradient clipped to 1). Results: docs/benchmarks.md, issue 13, "Session 4".
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F


def short_run_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a short seeded training on a demo folder (this script and bench_vision_probe.py)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a `prismer data demo` folder")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and order of the training samples")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a tiny spec field (YAML value)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    return parser


def seeded_tiny_spec(args: argparse.Namespace):
    """Seed torch and random, set the threads, and load the tiny spec with ``--set``'s overrides."""
    from prismer_core.experts.settings import parse_yaml_values
    from prismer_core.specs import load_spec

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    return load_spec("tiny", overrides=parse_yaml_values(args.set, "--set", "image_size=128"))


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main``; a PrismerError (a bad --set, a missing folder) ends it with its one-line message."""
    from prismer_core.errors import PrismerError

    try:
        main()
    except PrismerError as exc:
        raise SystemExit(f"error: {exc}") from None


def main() -> None:
    from transformers import get_cosine_schedule_with_warmup

    from prismer_core.demo.scenes import scene_of
    from prismer_core.model.decoder import TextDecoder
    from prismer_core.text import TextCodec, task_prompt
    from prismer_core.train.engine import parameter_groups

    parser = short_run_parser(__doc__)
    parser.add_argument("--no-captions", action="store_true", help="train on the questions alone")
    args = parser.parse_args()
    spec = seeded_tiny_spec(args)
    width = spec.decoder.hidden
    codec = TextCodec.for_decoder(spec.decoder)
    decoder = TextDecoder(spec.decoder, width)

    generator = torch.Generator().manual_seed(1234)
    embeddings: dict[tuple, torch.Tensor] = {}

    def embedding(*key) -> torch.Tensor:
        if key not in embeddings:
            embeddings[key] = torch.randn(width, generator=generator)
        return embeddings[key]

    tokens_of: dict[str, torch.Tensor] = {}

    def oracle_tokens(image: str) -> torch.Tensor:
        if image not in tokens_of:
            cells = [embedding("empty") + embedding("cell", i) for i in range(6)]
            for shape in scene_of(args.data, image).shapes:
                cell = shape.row * 3 + shape.column
                word = embedding("word", shape.word) if shape.word else 0
                cells[cell] = embedding("colour", shape.colour) + embedding("shape", shape.kind) + embedding("cell", cell) + word
            tokens_of[image] = torch.stack(cells)
        return tokens_of[image]

    def rows(split: str) -> list[tuple[str, str, str, str]]:
        out = []
        for line in (args.data / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "caption" in row:
                if not args.no_captions:
                    out.append((row["image"], "", row["caption"], "caption"))
            else:
                out.append((row["image"], task_prompt("vqa", row["question"]), row["answer"], row["type"]))
        return out

    train_rows = rows("train")
    val_questions = [r for r in rows("val") if r[3] != "caption"]
    train_questions = [r for r in train_rows if r[3] != "caption"][:400]

    def run(batch):
        text = codec.training_batch([b[1] for b in batch], [b[2] for b in batch])
        vision = torch.stack([oracle_tokens(b[0]) for b in batch])
        hidden, _ = decoder(text.input_ids, decoder.start(vision), text.attention_mask)
        return hidden, F.pad(text.labels[:, 1:], (0, 1), value=-100)

    @torch.no_grad()
    def accuracy(questions) -> dict[str, float]:
        decoder.eval()
        right: dict[str, list[bool]] = {}
        for start in range(0, len(questions), 64):
            batch = questions[start : start + 64]
            hidden, targets = run(batch)
            correct = ((decoder.logits(hidden).argmax(-1) == targets) | (targets == -100)).all(1)
            for row, ok in zip(batch, correct.tolist()):
                right.setdefault(row[3], []).append(ok)
        decoder.train()
        scores = {kind: round(sum(v) / len(v), 3) for kind, v in sorted(right.items())}
        scores["all"] = round(sum(map(sum, right.values())) / sum(map(len, right.values())), 3)
        return scores

    optimizer = torch.optim.AdamW(parameter_groups(decoder, weight_decay=0.05), lr=args.lr, fused=True)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, round(0.05 * args.steps)), args.steps)
    start, window = time.perf_counter(), 0.0
    for step in range(1, args.steps + 1):
        hidden, targets = run(random.sample(train_rows, args.batch_size))
        predicted = targets != -100
        loss = F.cross_entropy(decoder.logits(hidden[predicted]), targets[predicted])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        window += loss.item()
        if step % args.every == 0:
            print(json.dumps({"tag": args.tag, "step": step, "loss": round(window / args.every, 3), **accuracy(val_questions),
                              "train_all": accuracy(train_questions)["all"], "seconds": round(time.perf_counter() - start)}), flush=True)
            window = 0.0


if __name__ == "__main__":
    run_main(main)
