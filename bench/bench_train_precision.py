"""A training step in fp32 and under bf16 autocast, beside the reference's fp32 step, interleaved in one run.

    PRISMER_REF_GIT=... REF_PY=REFVENV/bin/python .venv/bin/python bench/bench_train_precision.py \\
        --rows tiny:none,tiny:six,base:none,base:six --threads 1 --rounds 2

Per round and row: the reference model code's train step (NVlabs/prismer, through
../shared/bench/reference_cpu.py, its fastest of its own steps, as side_by_side.py reports it), then
bench_model's ``train`` (fp32) and ``train_bf16`` (fp32 weights, bf16 autocast: what
`prismer train --precision bf16` runs) at the same shapes and batch. bf16 pays only on CPUs with
bf16 instructions (AVX-512 BF16, AMX); whether it keeps what the model learns is measured with
bench_demo_variant.py ``--train-precision bf16``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_caption_limit  # noqa: E402  (the reference runner and our measurement in a child process)

TASKS = ("train", "train_bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="tiny:none,tiny:six,base:none,base:six", help="shape:experts pairs (bench_model's names)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true", help="ours only")
    args = parser.parse_args()
    if not args.no_reference:
        bench_caption_limit.check_reference_setup()
    rows = [tuple(row.split(":")) for row in args.rows.split(",")]
    seen: dict[tuple[str, str], dict[str, list[float]]] = {row: {} for row in rows}
    for round_ in range(args.rounds):
        for shape, experts in rows:
            times = seen[(shape, experts)]
            if not args.no_reference:
                result = bench_caption_limit.reference_result(shape, experts, args.threads, ("--gen-batches", "1", "--gen-reps", "1", "--max-gen-seconds", "0"))
                times.setdefault("reference", []).append(result["train_step_ms_min"] / 1000)
            for task in TASKS:
                repeats = 5 if shape == "tiny" else 3
                times.setdefault(task, []).append(bench_caption_limit.ours(shape, experts, task, args.threads, repeats, 16)["seconds"])
            print(json.dumps({"row": f"{shape}:{experts}", "round": round_, **{k: v[-1] for k, v in times.items()}}), flush=True)
    reference = not args.no_reference
    print("\n| row | " + ("reference fp32 s | " if reference else "") + "ours fp32 s | ours bf16 autocast s | bf16 vs fp32 |"
          + (" fp32 speed-up | bf16 speed-up |" if reference else ""))
    print("|---|" + ("---|" if reference else "") + "---|---|---|" + ("---|---|" if reference else ""))
    for row in rows:
        times = seen[row]
        fp32, bf16 = min(times["train"]), min(times["train_bf16"])
        line = f"| {row[0]}:{row[1]} | "
        if reference:
            line += f"{min(times['reference']):.3f} | "
        line += f"{fp32:.3f} | {bf16:.3f} | {fp32 / bf16:.2f}x |"
        if reference:
            ref = min(times["reference"])
            line += f" {ref / fp32:.2f}x | {ref / bf16:.2f}x |"
        print(line)
    if args.rounds > 1:
        bench_caption_limit.print_spread(seen)


if __name__ == "__main__":
    main()
