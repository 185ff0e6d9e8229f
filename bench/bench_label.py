"""`prismer label` throughput with 1 and more worker processes, measured side by side.

Draws demo scenes (``prismer data demo``'s generator), then labels them into fresh stores
with the given experts, alternating the worker counts in every repeat (so a change in the
machine's load hits both alike), and prints images/s per count with the spread, the ratio
to one worker, and the load average before and after. Process start-up (torch, the OCR
models) is included: it is part of what a user waits for.

    .venv/bin/python bench/bench_label.py --experts ocr --images 96 --workers 1,2 --repeats 3

``--variant NAME:EXPERT.KEY=VALUE`` (repeatable, settings joined by ``;``) adds a configuration
measured beside the defaults, every worker count each, in the same alternation; for example the
OCR engine's own detector size for 192 px scenes: ``--variant engine:ocr.max_upscale=3.84``.
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
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:EXPERT.KEY=VALUE",
                        help="expert settings measured beside the defaults (several joined by ';')")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from prismer_core.demo import generate_demo
    from prismer_core.labeling import label_images
    from prismer_core.experts.settings import parse_assignments
    from prismer_core.registry import parse_expert_names

    experts = parse_expert_names(args.experts)
    counts = [int(c) for c in args.workers.split(",")]
    variants: dict[str, dict[str, dict[str, str]]] = {"default": {}}
    for text in args.variant:
        name, _, assignments = text.partition(":")
        variants[name] = parse_assignments(assignments.split(";"), experts)
    runs = [(name, count) for name in variants for count in counts]
    scratch = Path(tempfile.mkdtemp(prefix="bench_label."))
    try:
        summary = generate_demo(scratch / "data", n=args.images * 10 // 8 + 3, seed=0, size=192)
        images = summary.manifest("train")
        load_before = os.getloadavg()
        rates: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
        for repeat in range(args.repeats):
            for name, count in runs if repeat % 2 == 0 else runs[::-1]:
                store = scratch / f"store-{name}-{count}-{repeat}"
                report = label_images(images, experts, store, batch_size=args.batch_size, workers=count,
                                      settings=variants[name], show_progress=False)
                rates[name, count].append(report.images_per_second)
                print(f"repeat {repeat + 1}, {name}, {count} worker(s): {report.labelled} images, "
                      f"{report.images_per_second:.2f} images/s", flush=True)
                shutil.rmtree(store)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = statistics.median(rates[runs[0]])
    print(f"\n{args.experts} on {summary.images['train']} scenes, {os.cpu_count()} cores, "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print("| settings | workers | images/s (median) | min-max | vs. first |")
    print("|---|---|---|---|---|")
    for (name, count), values in rates.items():
        shown = "; ".join(f"{e}.{k}={v}" for e, kv in variants[name].items() for k, v in kv.items()) or name
        print(f"| {shown} | {count} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} | "
              f"{statistics.median(values) / base:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "experts": experts, "images": summary.images["train"],
            "load_average": [load_before[0], load_after[0]], "variants": variants,
            "images_per_second": {f"{name}/{count}": values for (name, count), values in rates.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
