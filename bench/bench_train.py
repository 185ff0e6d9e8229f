"""Training throughput of the tiny spec on CPU: is the model or the data the bottleneck?

Measures, on the demo scenes, in images per second (and for whole training the model FLOPs
utilisation against the CPU's measured fp32 matmul peak, as `prismer train` logs it):

* the data loader alone (read image, expert maps, crop/resize, label embedding, tokenise,
  collate) with 0, 2 (edge, ocr) and 6 experts;
* a model step alone (forward, backward, AdamW) on a ready batch, with 0, 2 and 6 experts;
* whole training (``prismer_core.train.train``: loader + model) with 0, 2 and 6 experts,
  maps read from a label store, and with edge+ocr computed on the fly.

Six experts are depth, normal, edge, seg, objdet and ocr. Only edge and ocr run offline here
(the others need weights), so the label store gets their real maps and synthetic maps of the
right kind for the other four (smooth depth, normals, segment and box label maps with
instances): the loader and model costs are those of six experts, the experts' own inference
is not included (see the "Experts" section for that).

``--gpu`` instead measures training steps of one engine on synthetic batches: the base spec
(random init, shapes of ViT-B/16 + RoBERTa-base) with no experts and with six, DeepSpeed
ZeRO-2 (``--engine ddp`` or ``plain`` for comparison) in bf16: images/s, MFU against the GPU's
datasheet bf16 peak, and peak GPU memory. Run it under
``torchrun --nproc_per_node N bench/bench_train.py --gpu``; bench/gpu_check.sh does, and its dry
run checks the same code on the CPU (``--device cpu --spec tiny --spec-set image_size=32``).

    .venv/bin/python bench/bench_train.py            # prints a markdown table, writes JSON
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIX = ("depth", "normal", "edge", "seg", "objdet", "ocr")
LIVE = ("edge", "ocr")


def synthetic_output(spec, height: int, width: int, rng: np.random.Generator):
    """A valid map of ``spec``'s kind for an expert that cannot run here (no weights)."""
    from prismer_core.experts.contract import DenseMap, SemanticMap

    if not spec.is_semantic:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        planes = [np.sin(xs / width * np.pi * (c + 1) + rng.uniform(0, 3)) * np.cos(ys / height * np.pi) for c in range(spec.channels)]
        return DenseMap(np.clip(np.stack(planes, -1), -1, 1).astype(np.float32))
    labels = np.zeros((height, width), np.int32)
    instances = np.zeros((height, width), np.int32)
    names = list(spec.vocabulary[:3]) if spec.vocabulary else ["thing", "other thing", "third"]
    for index in range(3):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        labels[y0 : y0 + height // 3, x0 : x0 + width // 3] = index + 1
        instances[y0 : y0 + height // 3, x0 : x0 + width // 3] = index + 1
    return SemanticMap(labels, names, instances if spec.has_instances else None)


def prepare(root: Path, images: int, scene_size: int) -> dict:
    """Demo scenes, a label store with real edge/ocr maps and synthetic maps for the rest."""
    from prismer_core.demo import generate_demo
    from prismer_core.data.label_store import LabelStore
    from prismer_core.data.manifest import read_images
    from prismer_core.labeling import label_images
    from prismer_core.registry import get_registry

    summary = generate_demo(root / "data", n=images, seed=0, size=scene_size)
    manifest = summary.manifest("train")
    start = time.perf_counter()
    report = label_images(manifest, list(LIVE), root / "labels", show_progress=False)
    labelling = report.labelled / (time.perf_counter() - start)
    registry = get_registry()
    others = [name for name in SIX if name not in LIVE]
    specs = {name: registry.entry(name).spec for name in others}
    store = LabelStore(root / "labels")
    store.open_for(specs, {name: registry.entry(name).plugin.package for name in others})
    rng = np.random.default_rng(0)
    for source in read_images(manifest):
        image = source.load()
        height, width = image.pixels.shape[:2]
        for name, spec in specs.items():
            store.write(name, image.key, synthetic_output(spec, height, width, rng))
    return {"manifest": manifest, "labels": root / "labels", "labelling_images_per_s": labelling}


def training_data(manifest: Path, labels: Path | None, experts: tuple[str, ...], image_size: int):
    """The dataset and collator a run builds (same classes, same settings as `prismer train`)."""
    from prismer_core.data.dataset import Collator, TrainingData
    from prismer_core.data.encoding import SampleEncoder
    from prismer_core.data.labels import LiveLabels, StoredLabels
    from prismer_core.data.manifest import load_data
    from prismer_core.data.transforms import PairedTransform
    from prismer_core.model import build_model
    from prismer_core.registry import get_registry
    from prismer_core.semantic import load_label_encoder
    from prismer_core.specs import load_spec
    from prismer_core.text import TextCodec

    specs = get_registry().require(list(experts), live=labels is None)
    model = build_model(load_spec("tiny", {"image_size": image_size}), specs)
    source = (StoredLabels(labels, specs) if labels else LiveLabels(list(experts))) if experts else None
    encoder = load_label_encoder() if any(s.is_semantic for s in specs.values()) else None
    samples = load_data(manifest, ("caption", "vqa")).samples
    sample_encoder = SampleEncoder(PairedTransform(image_size, True, (0.9, 1.0)), model.image_mean, model.image_std,
                                   specs, encoder)
    data = TrainingData(samples, sample_encoder, source)
    return model, data, Collator(TextCodec.for_decoder(model.spec.decoder))


def loader_images_per_s(data, collate, batch_size: int, workers: int, batches: int) -> float:
    import torch

    from prismer_core.train.sampler import StepSampler

    sampler = StepSampler(len(data), batch_size, batches + 1, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    iterator = iter(loader)
    next(iterator)  # workers started, first batch ready
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def model_images_per_s(model, data, collate, batch_size: int, steps: int) -> float:
    from prismer_core.train.config import TrainConfig
    from prismer_core.train.distributed import Distributed
    from prismer_core.train.engine import make_engine

    config = TrainConfig(data=["-"], out="-", batch_size=batch_size, max_steps=steps + 2, lr=1e-4)
    engine = make_engine("plain", model, config, Distributed())
    batch = collate([data[(i, i)] for i in range(batch_size)])
    engine.step(batch)  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step(batch)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def training_images_per_s(root: Path, manifest: Path, labels: Path | None, experts: tuple[str, ...], args) -> tuple[float, float]:
    """Whole `train()` runs; the medians of the per-step rates and MFUs after two warm-up steps."""
    from prismer_core.train import TrainConfig, train

    out = root / "runs" / f"{'-'.join(experts) or 'rgb'}-{'store' if labels else 'live'}"
    config = TrainConfig(data=[str(manifest)], out=str(out), spec="tiny", spec_overrides={"image_size": args.image_size},
                         experts=list(experts), tasks=["caption", "vqa"], labels=str(labels) if labels else None,
                         max_steps=args.steps + 2, batch_size=args.batch_size, workers=args.workers, crop_scale=0.9)
    train(config, show_progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "images_per_s" in r][2:]
    return statistics.median(r["images_per_s"] for r in steps), statistics.median(r["mfu"] for r in steps)


def cpu_bench(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"machine": machine(), "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared = prepare(root, args.images, args.scene_size)
        results["labelling_edge_ocr_images_per_s"] = round(prepared["labelling_images_per_s"], 2)
        cases = [("0 (PrismerZ)", (), "store"), ("2: edge, ocr", LIVE, "store"), ("6", SIX, "store"), ("2: edge, ocr", LIVE, "on the fly")]
        for label, experts, source in cases:
            labels = prepared["labels"] if source == "store" else None
            model, data, collate = training_data(prepared["manifest"], labels, experts, args.image_size)
            row = {"experts": label, "maps": source if experts else "-"}
            row["loader"] = loader_images_per_s(data, collate, args.batch_size, args.workers, args.batches)
            if source == "store":
                row["model step"] = model_images_per_s(model, data, collate, args.batch_size, args.steps)
            row["training"], row["training MFU"] = training_images_per_s(root, prepared["manifest"], labels, experts, args)
            results["rows"].append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
            print(json.dumps(results["rows"][-1]), file=sys.stderr)
    return results


def engine_bench(args) -> dict:
    """Training steps of one engine on synthetic batches (no tokenizer, data or weights needed):
    images/s, MFU and peak GPU memory, for each expert set. The base spec by default, random
    init, bf16; on the CPU (``--device cpu``) the same code checks itself with tiny shapes."""
    import torch

    from bench_model import _batch
    from prismer_core.data.dataset import Batch
    from prismer_core.model import build_model
    from prismer_core.registry import get_registry
    from prismer_core.specs import load_spec
    from prismer_core.train.config import TrainConfig
    from prismer_core.train.distributed import choose_engine, setup_distributed
    from prismer_core.train.engine import make_engine
    from prismer_core.train.utilisation import counted_flops, mfu, significant

    ctx = setup_distributed(args.device)
    if ctx.device.type != "cuda" and args.device == "auto":
        raise SystemExit("--gpu found no GPU here (--device cpu runs the same measurement on the CPU)")
    cuda = ctx.device.type == "cuda"
    engine_name = choose_engine(args.engine, ctx)  # ddp in one process is the plain engine
    overrides = {"vision.pretrained": None, "decoder.weights": None, **args.spec_set}
    registry = get_registry()
    results: dict = {
        "machine": machine(), "device": str(ctx.device), "gpu": torch.cuda.get_device_name(ctx.device) if cuda else None,
        "world_size": ctx.world_size, "engine": engine_name, "precision": args.precision, "spec": args.spec,
        "spec_overrides": overrides, "batch_size": args.batch_size, "steps": args.steps,
        "warmup_steps": args.warmup_steps + 1, "rows": [],
    }
    for experts in args.expert_sets:
        torch.manual_seed(0)
        specs = {name: registry.entry(name).spec for name in experts}
        model = build_model(load_spec(args.spec, overrides), specs)
        config = TrainConfig(data=["-"], out="-", batch_size=args.batch_size, max_steps=args.steps + args.warmup_steps + 1,
                             precision=args.precision, engine=engine_name).validate()
        if cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        engine = make_engine(engine_name, model, config, ctx)
        count = args.batch_size
        ids = torch.randint(5, model.spec.decoder.vocab_size, (count, 32))
        labels = ids.clone()
        labels[:, :8] = -100  # the prompt
        batch = Batch(_batch(model, count), ids, torch.ones_like(ids), labels, ["caption"] * count, [])
        batch = batch.pin_memory() if cuda else batch  # as the training loader hands it over
        first_loss, flops = counted_flops(lambda: engine.step(batch))  # also the first warm-up step
        finish = (lambda: torch.cuda.synchronize(ctx.device)) if cuda else (lambda: None)
        for _ in range(args.warmup_steps):
            engine.step(batch)
        finish()
        start = time.perf_counter()
        for _ in range(args.steps):
            last_loss = engine.step(batch)
        finish()
        seconds = time.perf_counter() - start
        images_per_s = args.steps * count * ctx.world_size / seconds
        copies = []  # the step's copy of its batch from the host, on its own
        for _ in range(3):
            copy_start = time.perf_counter()
            batch.to(ctx.device)  # the bytes copied: a cast, when there is one, runs on the device after
            finish()
            copies.append(time.perf_counter() - copy_start)
        utilisation = mfu(images_per_s, flops / count, str(ctx.device), ctx.world_size)
        results["rows"].append({
            "experts": list(experts), "images_per_s": round(images_per_s, 2), "step_seconds": round(seconds / args.steps, 4),
            "mfu": significant(utilisation), "flops_per_image": flops / count,
            "loss_first": round(first_loss, 4), "loss_last": round(last_loss, 4),
            "batch_mb": round(tensor_bytes(batch) / 1e6, 1), "batch_copy_s": round(statistics.median(copies), 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 2) if cuda else None,
        })
        if args.profile:
            results["rows"][-1]["profile"] = profile_steps(lambda: engine.step(batch), cuda, finish, args.profile)
        print(json.dumps(results["rows"][-1]), file=sys.stderr, flush=True)
        engine.close()  # DeepSpeed's engine holds its memory (and the group) until destroyed
        del engine, model
        if cuda:
            torch.cuda.empty_cache()
    ctx.close()  # also the group DeepSpeed joins for one process
    return results if ctx.is_main else None


def profile_steps(step, cuda: bool, finish, steps: int, top: int = 15) -> dict:
    """Where ``steps`` training steps spend their time, by torch.profiler: wall seconds and
    kernel (self) seconds a step, op calls a step, and the ops that take the most self time on
    the GPU (on the CPU for a CPU run): when kernels fill far less than the wall, the step waits
    on the host (launches, copies, syncs) rather than on the GPU's arithmetic."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    start = time.perf_counter()
    with profile(activities=activities) as recorded:
        for _ in range(steps):
            step()
        finish()
    wall = (time.perf_counter() - start) / steps
    events = [e for e in recorded.key_averages() if getattr(e, key) > 0]
    events.sort(key=lambda e: -getattr(e, key))
    return {
        "steps": steps, "wall_s_per_step": round(wall, 4),
        "self_s_per_step": round(sum(getattr(e, key) for e in events) / steps / 1e6, 4),
        "op_calls_per_step": sum(e.count for e in recorded.key_averages() if e.key.startswith("aten::")) // steps,
        "top": [{"name": e.key[:90], "calls_per_step": e.count // steps, "ms_per_step": round(getattr(e, key) / steps / 1e3, 2)}
                for e in events[:top]],
        "torch": torch.__version__,
    }


def tensor_bytes(value) -> int:
    """Bytes of every tensor in a batch (dataclasses and dicts of tensors, followed down)."""
    import dataclasses

    import torch

    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if dataclasses.is_dataclass(value):
        return sum(tensor_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


def machine() -> dict:
    import torch

    return {
        "date": datetime.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }


def markdown(results: dict) -> str:
    lines = ["| experts | maps | data loader alone | model step alone | training | training MFU |", "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        model = f"{row['model step']:.1f}" if "model step" in row else "-"
        lines.append(f"| {row['experts']} | {row['maps']} | {row['loader']:.1f} | {model} | {row['training']:.1f} "
                     f"| {row['training MFU']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="demo scenes to label and train on")
    parser.add_argument("--scene-size", type=int, default=192)
    parser.add_argument("--image-size", type=int, default=64, help="what the model sees (the demo's setting)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--batches", type=int, default=8, help="timed loader batches")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--gpu", action="store_true",
                        help="engine steps on synthetic batches: base spec, DeepSpeed ZeRO-2, bf16 (run under torchrun)")
    engine = parser.add_argument_group("--gpu settings")
    engine.add_argument("--engine", default="deepspeed", choices=("deepspeed", "ddp", "plain"))
    engine.add_argument("--device", default="auto", help="auto (this process's GPU), cuda, or cpu to check the script")
    engine.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    engine.add_argument("--spec", default="base")
    engine.add_argument("--spec-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a spec field, e.g. image_size=32 (repeatable)")
    engine.add_argument("--expert-sets", default="none,six", help="comma-separated: none (PrismerZ), six")
    engine.add_argument("--warmup-steps", type=int, default=2, help="untimed steps after the first (FLOP-counted) one")
    engine.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile this many steps (torch.profiler): the ops that take the time")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.gpu:
        from prismer_core.experts.settings import parse_yaml_values

        args.spec_set = parse_yaml_values(args.spec_set, "--spec-set", "image_size=32")
        args.expert_sets = [{"none": (), "six": SIX}[name] for name in args.expert_sets.split(",")]
    results = engine_bench(args) if args.gpu else cpu_bench(args)
    if results is None:  # not the main process
        return
    print(json.dumps(results, indent=2) if args.gpu else markdown(results))
    print(json.dumps(results["machine"]), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
