"""How large the `ocr` expert's detector should see a small image: words read, false reads and time per detector upscale.

rapidocr's detector scales every image so that its short side is 736 px; the `ocr` expert caps
that upscale (``--set ocr.max_upscale=F``, default 2). This draws scene sets that differ in image
side and background (``prismer data demo``'s generator), reads every image through the expert as
`prismer label` does, once per cap (interleaved per image, one thread), and reports per set and
cap: the detector's side, the share of printed words read, the reads that are no printed word,
and the median milliseconds per image. A cap of 736/side reproduces the engine's own size.

    .venv/bin/python bench/bench_ocr_scale.py --sizes 128,192,320 --images 60 --caps 1.5,2,3,engine
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,192,320", help="image sides of the scene sets")
    parser.add_argument("--backgrounds", default="stripes,gradient,dark", help="one per size, in order")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--caps", default="1.5,2,3,engine", help="max_upscale values; 'engine': 736/side")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from prismer_core.demo.scenes import WORD_PHRASE, SceneOptions, generate_demo
    from prismer_core.runner import ExpertRunner
    from prismer_experts.ocr import RapidOcrReader

    torch.set_num_threads(1)  # the engine's threads follow torch's (cpu_threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    backgrounds = args.backgrounds.split(",")
    print("| side | background | cap | detector side | words read | false reads | ms per image (median) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_ocr_scale.") as scratch:
        for index, size in enumerate(sizes):
            background = backgrounds[index % len(backgrounds)]
            summary = generate_demo(Path(scratch) / str(size), n=args.images, seed=index, size=size,
                                    options=SceneOptions(background=background))
            truth: dict[Path, set[str]] = {}
            for split in ("train", "val", "test"):
                for line in summary.manifest(split).read_text().splitlines():
                    row = json.loads(line)
                    if "caption" in row:
                        words = row["caption"].split(WORD_PHRASE)[1:]
                        truth[summary.out / row["image"]] = {w.split()[0] for w in words}
            caps = {cap: RapidOcrReader.DETECTION_SIDE / size if cap == "engine" else float(cap) for cap in args.caps.split(",")}
            runners = {cap: ExpertRunner(["ocr"], settings={"ocr": {"max_upscale": str(value)}}) for cap, value in caps.items()}
            found = {cap: [0, 0] for cap in caps}
            times: dict[str, list[float]] = {cap: [] for cap in caps}
            for path, words in truth.items():
                image = np.asarray(Image.open(path).convert("RGB"))
                for cap, runner in runners.items():
                    start = time.perf_counter()
                    names = set(runner([image], [path.name])["ocr"][0].names)
                    times[cap].append(time.perf_counter() - start)
                    found[cap][0] += len(words & names)
                    found[cap][1] += len(names - words)
            total = sum(len(words) for words in truth.values())
            for cap, value in caps.items():
                side = int(min(RapidOcrReader.DETECTION_SIDE, size * value))
                shown = f"engine ({value:.2f})" if cap == "engine" else cap
                print(f"| {size} | {background} | {shown} | {side} | {found[cap][0]}/{total} | {found[cap][1]} | "
                      f"{1000 * statistics.median(times[cap]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
