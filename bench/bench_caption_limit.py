"""Captioning one image against its limit: weights read per step × steps ÷ bandwidth + the encoder.

    .venv/bin/python bench/bench_caption_limit.py --rows base:none,base:six --threads 1
    PRISMER_REF_GIT=... REF_PY=REFVENV/bin/python .venv/bin/python bench/bench_caption_limit.py --reference

Batch 1, 3 beams, ``bench_model.NEW_TOKENS`` new tokens (16 with ``--new-tokens 16``, as
../shared/bench/side_by_side.py decodes). With a key/value cache every step reads every weight
of the decoder once (self-attention, the cross-attention's query and output, adaptors,
feed-forward, the LM head's tied embedding matrix; the image's cross-attention keys/values are
cached) for 3 rows, so a step can take no less than its weight bytes ÷ the memory bandwidth.
The bandwidth is measured here (the best of summing and copying 1 GB, the same threads), the
encoder's time too (``encode_images``, packed weights), so::

    limit = decoder weight bytes × (new tokens + 1 prompt step) ÷ bandwidth + encoder seconds

The table gives ours (packed weights, as the Predictor runs; and unpacked, as before), fp32 and
bf16, each as a share of its limit. ``--reference`` also runs the reference model code
(NVlabs/prismer, through ../shared/bench/reference_cpu.py; its README says how to set it up) at
the same shapes in the same run, interleaved, and prints the speed-ups against it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE_SCRIPT = HERE.parent.parent / "shared" / "bench" / "reference_cpu.py"
REFERENCE_SETS = {"none": "none", "dense3": "dense3", "six": "all6"}
TASKS = ("caption_b1", "caption_b1_unpacked", "caption_b1_bf16", "caption_b1_bf16_unpacked")


def bandwidth(threads: int, gigabytes: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second this process reads from memory: the best of summing and of copying a
    buffer far larger than any cache (a copy reads and writes: counted as read + write)."""
    import torch

    torch.set_num_threads(threads)
    source = torch.ones(int(gigabytes * 2**30) // 4)
    target = torch.empty_like(source)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        source.sum()
        best = max(best, source.nbytes / (time.perf_counter() - start))
        start = time.perf_counter()
        target.copy_(source)
        best = max(best, 2 * source.nbytes / (time.perf_counter() - start))
    return best


def decoder_step_bytes(shape: str, experts: str, bf16: bool) -> tuple[int, float]:
    """(bytes of weights one cached decoding step reads, encoder seconds with packed weights)."""
    import torch

    sys.path.insert(0, str(HERE))
    import bench_model

    from prismer_core.model import pack_for_inference

    model = bench_model.build(shape, experts).eval()
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = model.to(dtype)
    pack_for_inference(model)
    skipped = ("cross_attn.key.", "cross_attn.value.", "embed.positions.", "embed.token_types.")
    read = sum(p.numel() * p.element_size() for name, p in model.decoder.named_parameters()
               if not any(part in name for part in skipped))
    batch = bench_model._batch(model, 1, dtype)
    times = []
    with torch.inference_mode():
        model.encode_images(batch)
        for _ in range(3):
            start = time.perf_counter()
            model.encode_images(batch)
            times.append(time.perf_counter() - start)
    return read, min(times)


def _in_child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE.parent)
    if out.returncode:
        raise SystemExit(f"a measurement failed: {(out.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(shape: str, experts: str, task: str, threads: int, repeats: int, new_tokens: int) -> dict:
    return _in_child(
        f"import sys, json; sys.path.insert(0, 'bench'); import bench_model as b; b.NEW_TOKENS = {new_tokens}; "
        f"print(json.dumps(b.measure({shape!r}, {experts!r}, {task!r}, {repeats}, {threads})))")


def limits(shape: str, experts: str, threads: int) -> dict:
    return _in_child(
        "import sys, json; sys.path.insert(0, 'bench'); import torch; import bench_caption_limit as c; "
        f"torch.set_num_threads({threads}); "
        f"fp32 = c.decoder_step_bytes({shape!r}, {experts!r}, False); bf16 = c.decoder_step_bytes({shape!r}, {experts!r}, True); "
        f"print(json.dumps(dict(bandwidth=c.bandwidth({threads}), fp32=fp32, bf16=bf16)))")


def reference_result(shape: str, experts: str, threads: int, extra: tuple[str, ...] = ()) -> dict:
    """The result line of ../shared/bench/reference_cpu.py (the reference model code) at these
    shapes; ``extra``: its own flags (``--gen-batches``, ``--steps``...)."""
    command = [os.environ["REF_PY"], str(REFERENCE_SCRIPT), "--config", shape, "--experts", REFERENCE_SETS[experts],
               "--threads", str(threads), "--no-flops", *extra]
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    results = [row for row in rows if row.get("type") == "result" and "train_step_ms_min" in row]
    if not results:
        raise SystemExit(f"the reference failed: {out.stderr[-2000:]}")
    return results[-1]


def reference(shape: str, experts: str, threads: int) -> float:
    """The reference's best caption latency at batch 1, seconds (max_length 20 after its prompt)."""
    result = reference_result(shape, experts, threads, ("--gen-batches", "1", "--steps", "1", "--warmup", "1"))
    return next(g["latency_s_min"] for g in result["generate"] if g["batch"] == 1)


def print_spread(measured: dict[tuple[str, str], dict[str, list[float]]]) -> None:
    """Each row's and task's fastest and slowest round, so a ratio can be read against the noise."""
    print("\nspread over rounds (min-max s): " + "; ".join(
        f"{shape}:{experts} {task} {min(v):.3f}-{max(v):.3f}" for (shape, experts), tasks in measured.items() for task, v in tasks.items()))


def check_reference_setup() -> None:
    if not (os.environ.get("REF_PY") and os.environ.get("PRISMER_REF_GIT") and REFERENCE_SCRIPT.exists()):
        raise SystemExit(f"the reference needs REF_PY and PRISMER_REF_GIT set and {REFERENCE_SCRIPT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="base:none,base:six", help="shape:experts pairs (bench_model's names)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="calls per measurement (best is kept)")
    parser.add_argument("--rounds", type=int, default=1, help="measure every row this many times, interleaved")
    parser.add_argument("--new-tokens", type=int, default=16, help="16: what the reference's max_length=20 decodes")
    parser.add_argument("--reference", action="store_true",
                        help="also run the reference (needs PRISMER_REF_GIT and REF_PY, see ../shared/bench/README.md)")
    parser.add_argument("--out", help="also write every measurement as JSON here")
    args = parser.parse_args()
    if args.reference:
        check_reference_setup()
    rows = [tuple(row.split(":")) for row in args.rows.split(",")]
    measured: dict[tuple[str, str], dict[str, list[float]]] = {row: {} for row in rows}
    bounds = {}
    for round_ in range(args.rounds):
        for shape, experts in rows:
            seen = measured[(shape, experts)]
            if round_ == 0:
                bounds[(shape, experts)] = limits(shape, experts, args.threads)
            if args.reference:
                seen.setdefault("reference", []).append(reference(shape, experts, args.threads))
            for task in TASKS:
                seen.setdefault(task, []).append(ours(shape, experts, task, args.threads, args.repeats, args.new_tokens)["seconds"])
            print(json.dumps({"row": f"{shape}:{experts}", "round": round_, **{k: v[-1] for k, v in seen.items()}}), flush=True)
    print(f"\n| row | precision | decoder MB per step | bandwidth GB/s | encoder s | limit s | ours packed s | "
          f"share of limit | unpacked s | packed speed-up |{' reference s | speed-up |' if args.reference else ''}")
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.reference else ""))
    for row in rows:
        seen, bound = measured[row], bounds[row]
        for precision, prefix in (("fp32", "caption_b1"), ("bf16", "caption_b1_bf16")):
            step_bytes, encoder = bound[precision]
            limit = step_bytes * (args.new_tokens + 1) / bound["bandwidth"] + encoder
            packed, unpacked = min(seen[prefix]), min(seen[prefix + "_unpacked"])
            line = (f"| {row[0]}:{row[1]} | {precision} | {step_bytes / 1e6:.0f} | {bound['bandwidth'] / 1e9:.1f} | "
                    f"{encoder:.3f} | {limit:.3f} | {packed:.3f} | {limit / packed:.0%} | {unpacked:.3f} | "
                    f"{unpacked / packed:.2f}x |")
            if args.reference:
                ref = min(seen["reference"])
                line += f" {ref:.3f} | {ref / packed:.2f}x |"
            print(line)
    if args.rounds > 1:
        print_spread(measured)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": {f"{r[0]}:{r[1]}": measured[r] for r in rows},
                                              "limits": {f"{r[0]}:{r[1]}": bounds[r] for r in rows}}, indent=2))


if __name__ == "__main__":
    main()
