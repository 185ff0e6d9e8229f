"""What the visual path learns: a short training run with the measurements that tell why.

Trains the tiny spec on demo scenes (``prismer data demo``) with the project's own model,
data path and optimiser (:func:`prismer_core.train.engine.make_optimizer`), in a loop that also
measures, every ``--every`` steps and at the end:

* **spread**: the std across images of the encoder's output tokens, relative to their RMS,
  for the RGB tokens and the latents apart (0 means every image gives the same tokens);
* **probes**: closed-form ridge probes from the flattened vision tokens of 256 training
  scenes to what each validation scene shows: the colour and the shape in each occupied cell
  of the 3×2 layout, the column of each colour present, and the number of shapes;
* **gradients**: the gradient norm of each part (before clipping; with both passes, after each
  loss's own clip, as training takes it) and its update relative to its weights, averaged over
  the window;
* **attention**: the share of the decoder's cross-attention that goes to the latents;
* **VQA**: greedy open-ended accuracy per question type on the validation questions, and the
  cross-entropy of their reference answers per type (`answer_loss_*`), which moves long before
  greedy answers leave the language prior.

    .venv/bin/python bench/bench_learning.py --data demo_out/data --steps 400 --every 100
    .venv/bin/python bench/bench_learning.py --data D --labels L --experts edge,ocr --train-set 'lr_scales={vision.backbone: 0.1}'

Spec fields are set with ``--set FIELD=VALUE`` (YAML values), as ``prismer train --spec-set``.
Prints one JSON line per measurement and writes them all to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.jsonl, val.jsonl and demo.json")
    parser.add_argument("--labels", type=Path, default=None)
    parser.add_argument("--experts", default="")
    parser.add_argument("--spec", default="tiny")
    parser.add_argument("--set", dest="spec_set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--train-set", dest="train_set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field (YAML value), e.g. lr_scales={vision.backbone: 0.1}")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=0, help="use only the first N training scenes (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tasks", default="caption,vqa")
    parser.add_argument("--vqa-limit", type=int, default=0, help="score only the first N validation questions (0: all)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tag", default="")
    return parser.parse_args(argv)


# -- ground truth of the demo scenes -----------------------------------------------------------
def probe_targets(scene, options) -> dict[str, np.ndarray]:
    """Per scene: colour and shape of each cell (0 = empty), column+1 of each colour (0 = absent), count."""
    cells = len(options.columns) * len(options.rows)
    colour = np.zeros(cells, int)
    shape = np.zeros(cells, int)
    column = np.zeros(len(options.colours), int)
    colours, shapes = list(options.colours), list(options.shapes)
    for s in scene.shapes:
        cell = s.row * len(options.columns) + s.column
        colour[cell] = colours.index(s.colour) + 1
        shape[cell] = shapes.index(s.kind) + 1
        column[colours.index(s.colour)] = s.column + 1
    return {"colour": colour, "shape": shape, "column": column, "count": np.array([len(scene.shapes)])}


def ridge_probe(train_x: np.ndarray, train_y: dict, val_x: np.ndarray, val_y: dict) -> dict[str, float]:
    """Dual ridge (kernel = standardised features), best of three strengths on validation,
    scored on occupied slots only (cells with a shape, colours present; all scenes for count)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (val_x - mean) / std
    gram, cross = a @ a.T, b @ a.T
    scale = float(np.trace(gram)) / len(a)
    results = {}
    for name in train_y:
        ytr, yva = train_y[name], val_y[name]  # [N, slots]
        classes = int(max(ytr.max(), yva.max())) + 1
        best = 0.0
        for strength in (0.1, 1.0, 10.0):
            alpha = np.linalg.solve(gram + strength * scale * np.eye(len(a)), np.eye(classes)[ytr].reshape(len(a), -1))
            scores = (cross @ alpha).reshape(len(b), ytr.shape[1], classes)
            predicted = scores.argmax(-1)
            scored = yva > 0 if name != "count" else np.ones_like(yva, bool)
            best = max(best, float((predicted[scored] == yva[scored]).mean()))
        results[name] = round(best, 3)
    return results


# -- the run ------------------------------------------------------------------------------------
class Probe:
    def __init__(self, args):
        from prismer_core.data.dataset import TrainingData
        from prismer_core.data.manifest import load_data
        from prismer_core.demo.scenes import SceneOptions
        from prismer_core.experts.settings import parse_yaml_values
        from prismer_core.model import build_model
        from prismer_core.specs import load_spec
        from prismer_core.train.config import TrainConfig
        from prismer_core.train.trainer import collator, label_encoder_for, label_source, require_experts, training_data

        self.args = args
        self.scene_options = SceneOptions.from_dict(json.loads((args.data / "demo.json").read_text()).get("options", {}))
        tasks = list(args.tasks.split(","))
        self.config = TrainConfig(data=[str(args.data / "train.jsonl")], out="-", experts=[e for e in args.experts.split(",") if e],
                                  labels=str(args.labels) if args.labels else None, tasks=tasks, spec=args.spec,
                                  spec_overrides=parse_yaml_values(args.spec_set, "--set", "image_size=128"), max_steps=args.steps,
                                  batch_size=args.batch_size, seed=args.seed, **parse_yaml_values(args.train_set, "--train-set", "lr=3e-4"))
        config = self.config
        specs = require_experts(config)
        torch.manual_seed(args.seed)  # as training does: the same initial weights for a seed
        self.model = m = build_model(load_spec(config.spec, config.spec_overrides or None), specs)
        self.labels = label_source(config, specs)
        encoder = label_encoder_for(specs)
        train = load_data(config.data, config.tasks).samples
        if args.train_images:
            keep = set(list(dict.fromkeys(s.image.name for s in train))[: args.train_images])
            train = [s for s in train if s.image.name in keep]
        val = load_data([str(args.data / "val.jsonl")], ["caption", "vqa"]).samples
        #: MaMMUT's contrastive pass trains beside the generative one when the spec has it
        self.contrastive_weight = config.contrastive_weight_for(m.spec)
        contrastive = self.contrastive_weight > 0
        self.train_data = training_data(config, m, specs, train, self.labels, encoder, describe=contrastive)
        self.eval_encoder = self.train_data.encoder.for_evaluation()

        def plain(samples):
            return TrainingData(samples, self.eval_encoder, self.labels, config.caption_prompt)

        first = {}
        for s in train:
            first.setdefault(s.image.name, s)
        probe_train = list(first.values())[:256]
        probe_val = list({s.image.name: s for s in val if s.task == "caption"}.values())
        self.probe_sets = {"train": plain(probe_train), "val": plain(probe_val)}
        self.targets = {k: self._targets(d.samples) for k, d in self.probe_sets.items()}
        vqa = [s for s in val if s.task == "vqa"]
        self.vqa = vqa[: args.vqa_limit] if args.vqa_limit else vqa
        self.collate = collator(config, m, contrastive=contrastive)
        self.latents = m.encoder.resampler.latents.shape[0] if m.encoder.resampler is not None else 0
        self.rgb_tokens = m.encoder.grid ** 2

    def _targets(self, samples):
        from prismer_core.demo.scenes import scene_of

        rows = [probe_targets(scene_of(self.args.data, s.image.name), self.scene_options) for s in samples]
        return {name: np.stack([r[name] for r in rows]) for name in rows[0]}

    @torch.no_grad()
    def tokens(self, data) -> torch.Tensor:
        self.model.eval()
        out = []
        for start in range(0, len(data), 32):
            batch = self.collate([data[(i, i)] for i in range(start, min(len(data), start + 32))])
            out.append(self.model.encode_images(batch.inputs))
        self.model.train()
        return torch.cat(out)

    def measure(self) -> dict:
        tokens = {k: self.tokens(d) for k, d in self.probe_sets.items()}
        record = {}
        val = tokens["val"]
        rgb = val[:, 1 : 1 + self.rgb_tokens]
        parts = {"rgb": rgb}
        if self.latents:
            parts["latents"] = val[:, -self.latents :]
        for name, t in parts.items():
            rms = float(t.pow(2).mean().sqrt())
            record[f"spread_{name}"] = round(float(t.std(0).mean()) / max(rms, 1e-12), 4)
        features = {k: t.flatten(1).double().numpy() for k, t in tokens.items()}
        record["probe"] = ridge_probe(features["train"], self.targets["train"], features["val"], self.targets["val"])
        if self.latents:
            record["probe_rgb_only"] = ridge_probe(
                tokens["train"][:, 1 : 1 + self.rgb_tokens].flatten(1).double().numpy(), self.targets["train"],
                rgb.flatten(1).double().numpy(), self.targets["val"])
        record.update(self.vqa_accuracy())
        record.update(self.answer_loss())
        return record

    @torch.no_grad()
    def answer_loss(self) -> dict:
        """Cross-entropy of the reference answers of the validation questions, per type: it moves
        long before greedy answers leave the language prior, so short runs can be compared."""
        from prismer_core.data.dataset import TrainingData

        self.model.eval()
        by_type = defaultdict(list)
        for sample in self.vqa:
            by_type[sample.question_type].append(sample)
        result = {}
        for kind, samples in sorted(by_type.items()):
            data = TrainingData(samples, self.eval_encoder, self.labels, self.config.caption_prompt)
            total = 0.0
            for start in range(0, len(data), 64):
                batch = self.collate([data[(i, i)] for i in range(start, min(len(data), start + 64))])
                total += float(self.model(**{**batch.arguments(), "pairs": None}).loss) * batch.size
            result[f"answer_loss_{kind}"] = round(total / len(data), 3)
        self.model.train()
        return result

    @torch.no_grad()
    def vqa_accuracy(self) -> dict:
        """Greedy open-ended answers through the Predictor (the inference path) on the in-memory model."""
        from prismer_core.inference.predictor import Predictor
        from prismer_core.metrics import vqa_accuracy

        predictor = Predictor(self.model, self.eval_encoder, self.labels, self.config.caption_prompt, codec=self.collate.codec)
        by_type, attention = defaultdict(list), []
        hooks = self._attention_hooks(attention) if self.latents else []
        try:
            said = predictor.answer(self.vqa, [s.question for s in self.vqa], num_beams=1, max_new_tokens=6, batch_size=64)
        finally:
            for hook in hooks:
                hook.remove()
            self.model.train()
        for sample, answer in zip(self.vqa, said):
            by_type[sample.question_type].append(vqa_accuracy(answer, sample.answers))
        result = {"vqa": round(float(np.mean([v for vs in by_type.values() for v in vs])), 3)}
        result.update({f"vqa_{k}": round(float(np.mean(v)), 3) for k, v in sorted(by_type.items())})
        if attention:
            result["latent_attention"] = round(float(np.mean(attention)), 3)
        return result

    def _attention_hooks(self, sink: list):
        latents = self.latents

        def hook(module, args, kwargs, output):
            x, kv = args[0], args[1]
            q = module._split(module.query(x))
            weights = torch.softmax(q @ kv[0].transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            sink.append(float(weights[..., -latents:].sum(-1).mean()))

        return [layer.cross_attn.register_forward_hook(hook, with_kwargs=True) for layer in self.model.decoder.layers]

    def run(self) -> list[dict]:
        from prismer_core.model.prismer import part_of
        from prismer_core.train.engine import clip_each_and_sum, clips_each_loss, make_optimizer, training_losses
        from prismer_core.train.sampler import StepSampler

        args, config, model = self.args, self.config, self.model
        optimizer, scheduler = make_optimizer(model, config, torch.device("cpu"))
        names = {p: part_of(n) for n, p in model.named_parameters() if p.requires_grad}
        sampler = StepSampler(len(self.train_data), args.batch_size, args.steps, args.seed)
        loader = torch.utils.data.DataLoader(self.train_data, batch_sampler=sampler, collate_fn=self.collate,
                                             num_workers=args.workers, prefetch_factor=4 if args.workers else None)
        records = []
        start = time.perf_counter()
        record = {"step": 0, **self.measure(), "seconds": 0.0}
        records.append(self._emit(record))
        window = defaultdict(list)
        losses, contrastive_losses = [], []
        model.train()
        for step, batch in enumerate(loader, start=1):
            output = model(**batch.arguments())
            parts = training_losses(output, self.contrastive_weight)
            if output.contrastive_loss is not None:
                contrastive_losses.append(output.contrastive_loss.item())
            optimizer.zero_grad(set_to_none=True)
            each = clips_each_loss(config, self.contrastive_weight) and len(parts) > 1
            if each:  # as the engine does: the gradients measured below are then already clipped per loss
                clip_each_and_sum(parts, list(names), config.grad_clip)
            else:
                sum(parts).backward()
            grads = defaultdict(float)
            for p, part in names.items():
                if p.grad is not None:
                    grads[part] += float(p.grad.pow(2).sum())
            for part, g in grads.items():
                window[f"grad {part}"].append(math.sqrt(g))
            measure_update = step % args.every == 0 or step == args.steps
            before = {p: p.detach().clone() for p in names} if measure_update else None
            if config.grad_clip > 0 and not each:
                torch.nn.utils.clip_grad_norm_([p for p in names], config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(output.loss.item())  # the generative loss alone
            if measure_update:
                update, weight = defaultdict(float), defaultdict(float)
                for p, part in names.items():
                    update[part] += float((p.detach() - before[p]).pow(2).sum())
                    weight[part] += float(p.detach().pow(2).sum())
                record = {"step": step, "loss": round(float(np.mean(losses[-args.every:])), 4)}
                if contrastive_losses:
                    record["contrastive_loss"] = round(float(np.mean(contrastive_losses[-args.every:])), 4)
                record["grad"] = {k[5:]: round(float(np.mean(v)), 4) for k, v in window.items()}
                record["update"] = {part: float(f"{math.sqrt(update[part] / max(weight[part], 1e-30)):.2e}") for part in update}
                record.update(self.measure())
                record["seconds"] = round(time.perf_counter() - start, 1)
                records.append(self._emit(record))
                window.clear()
        return records

    def _emit(self, record: dict) -> dict:
        record = {"tag": self.args.tag, **record}
        print(json.dumps(record), flush=True)
        return record


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = Probe(args)
    records = probe.run()
    summary = {"tag": args.tag, "argv": sys.argv[1:], "load_average": os.getloadavg()[0], "records": records}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as handle:
            handle.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
