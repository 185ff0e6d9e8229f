"""What a training batch weighs and how fast the data path makes it, with six experts.

A batch is copied from the host to the GPU every step, so its bytes bound the step: at the
base spec's 224 px, a GPU run (docs/benchmarks.md, "The first GPU run") spent most of its step
on that copy while semantic maps travelled as 64 floats a pixel. This measures, through the
data path `prismer train` uses (demo scenes, a label store with real edge/ocr maps and synthetic
maps of the right kind for depth, normal, seg and objdet, as bench/bench_train.py makes them):

* the bytes of one collated batch, by part (image, dense maps, semantic maps and their tables,
  instance ids, text), per sample and per batch;
* the loader's images/s (read, align, encode, collate) in this process and with workers.

To compare two commits, run it in each checkout, alternately:

    .venv/bin/python bench/bench_batch_bytes.py --image-size 224 --batch-size 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import SIX, tensor_bytes, loader_images_per_s, machine, prepare, training_data  # noqa: E402


def batch_bytes(batch) -> dict[str, int]:
    """Bytes of a collated batch's tensors by part: each field of its inputs, and the text."""
    parts = {item.name: tensor_bytes(getattr(batch.inputs, item.name)) for item in dataclasses.fields(batch.inputs)}
    parts["text"] = sum(tensor_bytes(getattr(batch, name)) for name in ("input_ids", "attention_mask", "labels"))
    return {name: size for name, size in parts.items() if size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="demo scenes to label")
    parser.add_argument("--scene-size", type=int, default=192)
    parser.add_argument("--image-size", type=int, default=224, help="what the model sees (base: 224)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3, help="timed loader batches")
    parser.add_argument("--workers", default="0,2", help="loader workers to time, comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(Path(tmp), args.images, args.scene_size)
        _, data, collate = training_data(prepared["manifest"], prepared["labels"], SIX, args.image_size)
        start = time.perf_counter()
        batch = collate([data[(i % len(data), i)] for i in range(args.batch_size)])
        collated_s = time.perf_counter() - start
        sizes = batch_bytes(batch)
        speeds = {workers: loader_images_per_s(data, collate, args.batch_size, workers, args.batches)
                  for workers in map(int, args.workers.split(","))}
    total = sum(sizes.values())
    result = {
        "machine": machine(), "image_size": args.image_size, "batch_size": args.batch_size,
        "bytes_by_part": sizes, "bytes_per_batch": total, "mb_per_sample": round(total / args.batch_size / 1e6, 2),
        "one_batch_in_process_s": round(collated_s, 3),
        "loader_images_per_s": {str(k): round(v, 2) for k, v in speeds.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
