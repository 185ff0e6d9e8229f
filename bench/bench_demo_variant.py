"""One of `make demo`'s runs with other seeds or spec settings, trained and scored as the demo does.

The demo's own `--seeds` trains every run with every seed; this trains one run (the experts
named, or none for PrismerZ) from the demo's `DemoSettings.train_config`, with spec keys
overridden, evaluates it with `evaluate_demo` (the table `make demo` prints) and appends one
JSON line to ``--results``. Several can run side by side on the same data and labels, each
with one thread:

    .venv/bin/python bench/bench_demo_variant.py --demo demo_out --name vg-s1 --seed 1 \\
        --experts edge,ocr --set contrastive.enabled=true --set contrastive.vision_gradient=false

``demo_out`` is a `make demo` (or `prismer demo`) folder: its data/ and labels/ are used, the
run goes to ``demo_out/variants/NAME``. Values of ``--set`` are YAML (``null``, ``[]``,
``{patch_size: 8}``); ``--lr-scale PART=F`` scales one part's rate; ``--spec smol`` trains the
demo's LLM run (SmolLM2 frozen, its own rate) instead of the tiny spec. Results: docs/benchmarks.md,
"Three seeds".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from rich.console import Console

    from prismer_core.demo.evaluation import evaluate_demo
    from prismer_core.demo.run import DemoSettings
    from prismer_core.errors import PrismerError
    from prismer_core.experts.settings import parse_key_values, parse_yaml_values
    from prismer_core.train import train
    from prismer_core.train.run_dir import RunDir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_out"), help="a demo folder with data/ and labels/")
    parser.add_argument("--name", required=True, help="the run's folder under DEMO/variants and its row name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experts", default="edge,ocr", help="comma-separated; empty for PrismerZ")
    parser.add_argument("--spec", default="tiny", help="tiny, or smol for the demo's LLM run (then give --steps)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="a spec override")
    parser.add_argument("--lr-scale", action="append", default=[], metavar="PART=F")
    parser.add_argument("--train-set", action="append", default=[], metavar="FIELD=YAML",
                        help="a TrainConfig field, e.g. group_by_image=true")
    parser.add_argument("--steps", type=int, default=None, help="default: the demo's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the demo's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-precision", default="fp32", help="fp32, or bf16 (autocast, as `prismer train --precision bf16`)")
    parser.add_argument("--eval-precision", default="fp32", help="fp32, or bf16 (as `prismer eval --precision bf16`)")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                        help="also keep RUN/checkpoints/step-N every N steps (to probe what a run kept when)")
    parser.add_argument("--results", type=Path, default=None, help="JSON lines (default DEMO/variants/results.jsonl)")
    args = parser.parse_args()

    experts = tuple(name for name in args.experts.split(",") if name)
    if args.spec != "tiny" and not args.steps:
        raise PrismerError(f"--spec {args.spec}: give --steps (the demo's LLM run has no default length)")
    settings = DemoSettings(threads=args.threads, llm_steps=args.steps or 0)
    folder = args.demo / "variants" / args.name
    config = settings.train_config(folder, args.demo / "data", args.demo / "labels", experts, args.seed, spec=args.spec)
    config.spec_overrides.update(parse_yaml_values(args.set, "--set", "image_size=128"))
    config.lr_scales = parse_key_values(args.lr_scale, "--lr-scale", "vision.backbone=0.1")
    for field, value in parse_yaml_values(args.train_set, "--train-set", "group_by_image=true").items():
        if field not in type(config).model_fields:
            raise PrismerError(f"--train-set {field}: no such training setting")
        setattr(config, field, value)
    if args.steps:
        config.max_steps = args.steps
    if args.batch_size:
        config.batch_size = args.batch_size
    config.precision = args.train_precision
    if args.checkpoint_every:
        config.checkpoint_every, config.keep_checkpoints = args.checkpoint_every, 1000
    config.validate()

    console = Console(stderr=True, soft_wrap=True, width=160)
    start = time.perf_counter()
    result = train(config, resume=RunDir(folder).exists(), console=console, show_progress=False)
    seconds = time.perf_counter() - start
    table = evaluate_demo({args.name: result.checkpoint}, args.demo / "data" / "test.jsonl", folder / "eval",
                          labels=args.demo / "labels" if experts else None, console=console, show_progress=False,
                          precision=args.eval_precision)
    row = {"name": args.name, "spec": args.spec, "seed": args.seed, "experts": list(experts), "set": args.set, "train_set": args.train_set, "lr_scale": args.lr_scale,
           "steps": config.max_steps, "batch_size": config.batch_size,
           "train_precision": args.train_precision, "eval_precision": args.eval_precision,
           "train_seconds": round(seconds), "val": result.val_loss, **table[args.name]}
    results = args.results or args.demo / "variants" / "results.jsonl"
    with results.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    from prismer_core.errors import PrismerError

    try:
        main()
    except PrismerError as exc:
        raise SystemExit(f"error: {exc}") from None
