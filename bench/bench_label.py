"""`prismer label` throughput with 1 and more worker processes, measured side by side.

Draws demo scenes (``prismer data demo``'s generator), then labels them into fresh stores
with the given experts, alternating the worker counts in every repeat (so a change in the
machine's load hits both alike), and prints images/s per count with the spread, the ratio
to one worker, and the load average before and after. Process start-up (torch, the OCR
models) is included: it is part of what a user waits for.

    .venv/bin/python bench/bench_label.py --experts ocr --images 96 --workers 1,2 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", default="ocr")
    parser.add_argument("--images", type=int, default=96, help="demo scenes to label (192 px, as `prismer demo` labels)")
    parser.add_argument("--workers", default="1,2", help="comma-separated process counts to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from prismer_core.demo import generate_demo
    from prismer_core.labeling import label_images
    from prismer_core.registry import parse_expert_names

    experts = parse_expert_names(args.experts)
    counts = [int(c) for c in args.workers.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="bench_label."))
    try:
        summary = generate_demo(scratch / "data", n=args.images * 10 // 8 + 3, seed=0, size=192)
        images = summary.manifest("train")
        load_before = os.getloadavg()
        rates: dict[int, list[float]] = {c: [] for c in counts}
        for repeat in range(args.repeats):
            for count in counts if repeat % 2 == 0 else counts[::-1]:
                store = scratch / f"store-{count}-{repeat}"
                report = label_images(images, experts, store, batch_size=args.batch_size, workers=count, show_progress=False)
                rates[count].append(report.images_per_second)
                print(f"repeat {repeat + 1}, {count} worker(s): {report.labelled} images, {report.images_per_second:.2f} images/s", flush=True)
                shutil.rmtree(store)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = statistics.median(rates[counts[0]])
    print(f"\n{args.experts} on {summary.images['train']} scenes, {os.cpu_count()} cores, "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print("| workers | images/s (median) | min-max | vs. first |")
    print("|---|---|---|---|")
    for count, values in rates.items():
        print(f"| {count} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} | {statistics.median(values) / base:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "experts": experts, "images": summary.images["train"],
            "load_average": [load_before[0], load_after[0]], "images_per_second": rates,
        }, indent=2))


if __name__ == "__main__":
    main()
