"""How the generative and the contrastive loss are combined in a step, and what each way costs.

Trains the demo's PrismerZ recipe (tiny spec at 64 px, frozen random ViT, 4 latents, RGB
tokens not attending to the latents, lr 3e-4, batch 16, the 1000-step schedule) from the same
initialisation and data order, once per variant, and prints the generative and contrastive
losses on 192 validation samples every 100 steps:

* ``generative``: the generative loss alone (the reference);
* ``summed``: both losses, one gradient-norm clip over their sum;
* ``each``: each loss's gradient clipped on its own, then summed (what training does,
  :func:`prismer_core.train.engine.clip_each_and_sum`);
* ``unclipped``: both losses, no clipping;
* ``weight0.1``: the contrastive loss at weight 0.1, one clip over the sum;
* ``image_detached``: as ``summed``, with the contrastive gradient kept out of the vision
  tokens (LiT-style: only the poolers and the text pass learn from it);
* ``each_image_detached``: as ``each``, with the spec's ``contrastive.vision_gradient: false``
  (the same, done by the model).

    .venv/bin/python bench/bench_two_losses.py --data demo_out/data --steps 300

Results: docs/benchmarks.md, "The contrastive pass in the demo".
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from prismer_core.data.manifest import load_data
from prismer_core.model import build_model
from prismer_core.model.prismer import Prismer
from prismer_core.specs import load_spec
from prismer_core.train.config import TrainConfig
from prismer_core.train.engine import clip_each_and_sum, make_optimizer, training_losses
from prismer_core.train.sampler import StepSampler
from prismer_core.train.trainer import collator, label_encoder_for, label_source, require_experts, training_data

VARIANTS = ("generative", "summed", "each", "unclipped", "weight0.1", "image_detached", "each_image_detached")
RECIPE = {"image_size": 64, "frozen": ["vision.backbone", "vision.embeddings"], "resampler.latents": 4,
          "resampler.rgb_attends_latents": False, "contrastive.enabled": True}


def run(data: str, variant: str, steps: int, clip: float = 1.0) -> list[dict]:
    config = TrainConfig(data=[f"{data}/train.jsonl"], out="-", experts=[], tasks=["caption", "vqa"], spec="tiny",
                         spec_overrides={**RECIPE, "contrastive.vision_gradient": variant != "each_image_detached"}, max_steps=1000, batch_size=16, lr=3e-4, crop_scale=0.9).validate()
    specs = require_experts(config)
    torch.manual_seed(0)
    model = build_model(load_spec(config.spec, config.spec_overrides), specs)
    if variant == "image_detached":
        model._contrastive_loss = lambda vision, pairs: Prismer._contrastive_loss(model, vision.detach(), pairs)
    labels, encoder = label_source(config, specs), label_encoder_for(specs)
    train = training_data(config, model, specs, load_data(config.data, config.tasks).samples, labels, encoder, describe=True)
    val_samples = load_data([f"{data}/val.jsonl"], config.tasks).samples[:192]
    val = training_data(config, model, specs, val_samples, labels, encoder, describe=True)
    collate = collator(config, model, contrastive=True)
    optimizer, scheduler = make_optimizer(model, config, torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = StepSampler(len(train), config.batch_size, 60, 0)
    weight = {"generative": 0.0, "weight0.1": 0.1}.get(variant, 1.0)

    def validate() -> tuple[float, float]:
        model.eval()
        generative = contrastive = 0.0
        batches = range(0, len(val), 32)
        with torch.no_grad():
            for start in batches:
                batch = collate([val[(j, j)] for j in range(start, min(start + 32, len(val)))])
                output = model(**batch.arguments())
                generative, contrastive = generative + float(output.loss), contrastive + float(output.contrastive_loss)
        model.train()
        return generative / len(batches), contrastive / len(batches)

    model.train()
    start, records = time.perf_counter(), []
    for step in range(steps):
        batch = collate([train[ref] for ref in sampler.batch(step)])
        output = model(**batch.arguments())
        losses = training_losses(output, weight)
        optimizer.zero_grad(set_to_none=True)
        if variant in ("each", "each_image_detached"):
            clip_each_and_sum(losses, params, clip)
        else:
            sum(losses).backward()
            if variant != "unclipped":
                torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            val_generative, val_contrastive = validate()
            records.append({"variant": variant, "step": step + 1, "val_generative": round(val_generative, 3),
                            "val_contrastive": round(val_contrastive, 3), "seconds": round(time.perf_counter() - start)})
            print(json.dumps(records[-1]), flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="demo data folder (prismer data demo): train.jsonl, val.jsonl")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write every record here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    records = [record for variant in variants for record in run(args.data, variant, args.steps)]
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=1)


if __name__ == "__main__":
    main()
