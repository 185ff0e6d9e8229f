"""The tiny spec's training step on demo batches: what the decoder's vocabulary, the padding of
text rows and the grouping of texts by image cost.

Builds the PrismerZ model of `make demo` (the demo's settings, 64 px) and batches of 16 drawn
from a `prismer data demo` folder through the trainer's own builders, then times full training
steps (forward, backward, AdamW) for every combination of

* the decoder's output vocabulary: ``full`` (30522 tokens) or ``data`` (the tokens of the
  training targets, ``decoder.output_vocabulary``);
* the rows decoded at one padded width, or in the collator's length buckets;
* a batch of 16 rows (one text per image), or of 16 images with all their texts
  (``--group-by-image``).

The variants run interleaved, ``--rounds`` times over the same batches, so a noisy machine
slows them alike; the table gives seconds per step (median and range over the rounds) and the
text rows a step learns. Results: docs/benchmarks.md, issue 13, "Session 9".

    .venv/bin/python bench/bench_text_rows.py --data demo_out/data --threads 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch


def build(data_dir: Path, grouped: bool, vocabulary: str, seed: int = 0):
    """The demo's PrismerZ model and its training batches, built as `prismer train` builds them."""
    from prismer_core.data.manifest import load_data
    from prismer_core.demo.run import DemoSettings
    from prismer_core.model import build_model
    from prismer_core.specs import load_spec
    from prismer_core.train.engine import make_optimizer
    from prismer_core.train.trainer import collator, require_experts, training_data, with_output_vocabulary

    config = DemoSettings().train_config(Path("unused"), data_dir, data_dir / "labels", ())
    config.group_by_image = grouped
    data = load_data(config.data, config.tasks)
    torch.manual_seed(seed)
    spec = load_spec(config.spec, {**config.spec_overrides, "decoder.output_vocabulary": vocabulary})
    model = build_model(with_output_vocabulary(spec, config, [data]), require_experts(config))
    dataset = training_data(config, model, {}, data.samples, None, None)
    optimizer, _ = make_optimizer(model, config, torch.device("cpu"))
    return model, optimizer, dataset, collator(config, model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a `prismer data demo` folder's data/")
    parser.add_argument("--batches", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = {}
    for grouped in (False, True):
        for vocabulary in ("full", "data"):
            model, optimizer, dataset, collate = build(args.data, grouped, vocabulary)
            draw = random.Random(0)
            batches = [collate([dataset[(draw.randrange(len(dataset)), i)] for i in range(16)]) for _ in range(args.batches + 1)]
            for buckets in (False, True):
                variants[(grouped, vocabulary, buckets)] = (model, optimizer, batches)

    def step(model, optimizer, batch, buckets: bool) -> None:
        arguments = batch.arguments()
        if not buckets:
            arguments["buckets"] = None
        output = model(**arguments)
        loss = output.loss + (output.reconstruction_loss if output.reconstruction_loss is not None else 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = {key: [] for key in variants}
    for key, (model, optimizer, batches) in variants.items():
        step(model, optimizer, batches[0], key[2])  # warm-up
    for _ in range(args.rounds):
        for key, (model, optimizer, batches) in variants.items():
            start = time.perf_counter()
            for batch in batches[1:]:
                step(model, optimizer, batch, key[2])
            seconds[key].append((time.perf_counter() - start) / args.batches)

    base = statistics.median(seconds[(False, "full", False)])
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds of {args.batches} steps, batches of 16")
    print("| batch of 16 | vocabulary | rows decoded | text rows a step | s per step, median (range) | vs rows, full, padded |")
    print("|---|---|---|---|---|---|")
    for key, values in seconds.items():
        grouped, vocabulary, buckets = key
        rows = sum(b.input_ids.shape[0] for b in variants[key][2][1:]) / args.batches
        median = statistics.median(values)
        print(f"| {'images, all their texts' if grouped else 'rows'} | {vocabulary} | {'length buckets' if buckets else 'padded'} "
              f"| {rows:.0f} | {median:.3f} ({min(values):.3f}-{max(values):.3f}) | {median / base:.2f}× |")


if __name__ == "__main__":
    main()
