"""`prismer demo`: the main job on the built-in offline default, start to end.

1. generate the demo scenes (:mod:`prismer_core.demo.scenes`) under ``OUT/data``;
2. label every split with the ``edge`` and ``ocr`` experts into the label store ``OUT/labels``;
3. train the tiny spec twice on the same data and schedule: with ``edge,ocr``, and as
   PrismerZ (RGB only), into ``OUT/runs/experts`` and ``OUT/runs/rgb``; both train MaMMUT's
   two passes (the generative one and the contrastive one) unless ``contrastive`` is off;
4. print what training measured (final losses, throughput) and where plots and checkpoints are;
5. evaluate both on the test split (:func:`evaluate_demo`): VQA accuracy, caption scores, and
   retrieval recall (text → image, image → text) against chance.

Every stage resumes: the data is deterministic, the label store skips finished images, and a
run folder that exists is resumed (a finished one is left as it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..train import TrainConfig, TrainResult, train
from ..train.run_dir import RunDir
from .evaluation import evaluate_demo as evaluate_runs
from .scenes import generate_demo

#: The two runs compared: a name and its experts.
RUNS: tuple[tuple[str, tuple[str, ...]], ...] = (("experts", ("edge", "ocr")), ("rgb", ()))


@dataclass
class DemoSettings:
    """Sizes chosen so the whole demo stays under 15 minutes on 2 CPU cores (12 min 10 s measured,
    13 min 57 s with the install; docs/benchmarks.md, "`make demo`"); raise them on a bigger machine."""

    n: int = 640
    seed: int = 0
    scene_size: int = 192  # the generated images (the OCR expert reads words at this size)
    image_size: int = 64  # what the model sees
    steps: int = 1000
    batch_size: int = 16
    #: At 1e-3 the decoder never learnt to read even a plain signal: fed the OCR stem tokens
    #: directly and trained on "what is written" questions alone, it stayed at the prior (0.08 on
    #: its own training questions after 400 steps) where 3e-4 reached 0.28. With 3e-4 both demo
    #: runs end with lower validation losses (docs/benchmarks.md, "`make demo`").
    lr: float = 3e-4
    workers: int = 1
    threads: int = 0
    eval_every: int = 250
    #: Resampler latents. The decoder gave them attention out of proportion to what they carried
    #: (a quarter to a half of its cross-attention with 16 latents): with 4, edge+ocr scored 0.376
    #: on the validation split against 0.314 with 16 (PrismerZ 0.359).
    latents: int = 4
    #: The random tiny ViT stays frozen, as the paper's pre-trained one does: trained from
    #: scratch on 256 scenes its output collapsed to the same tokens for every image within 100
    #: steps, and both runs then answered from the language prior alone (VQA accuracy 0.17).
    frozen: tuple[str, ...] = ("vision.backbone", "vision.embeddings")
    #: The RGB tokens do not attend to the expert latents (spec ``resampler.rgb_attends_latents``),
    #: so they stay what the frozen ViT makes of the image. With the paper's full attention the
    #: latents, nearly the same for every image early on, diluted them: on the validation split
    #: edge+ocr answered 0.32 against PrismerZ's 0.35 (320 scenes, 1000 steps, same seed); one-way, 0.35 both.
    rgb_attends_latents: bool = False
    #: Train the contrastive pass beside the generative one (MaMMUT), with weight 1, so the
    #: checkpoints also retrieve; docs/benchmarks.md compares the runs without it.
    contrastive: bool = True

    def train_config(self, out: Path, data: Path, labels: Path, experts: tuple[str, ...]) -> TrainConfig:
        return TrainConfig(
            data=[str(data / "train.jsonl")], val_data=[str(data / "val.jsonl")], out=str(out),
            spec="tiny", experts=list(experts),
            spec_overrides={
                "image_size": self.image_size, "frozen": list(self.frozen),
                "resampler.latents": self.latents, "resampler.rgb_attends_latents": self.rgb_attends_latents,
                "contrastive.enabled": self.contrastive,
            },
            tasks=["caption", "vqa"], labels=str(labels) if experts else None,
            max_steps=self.steps, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
            crop_scale=0.9, hflip=0.0,  # positions are named in the text: no flips
            workers=self.workers, threads=self.threads, eval_every=self.eval_every, eval_samples=256,
        )


@dataclass
class DemoReport:
    out: Path
    runs: dict[str, TrainResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)


def run_demo(out: str | Path, settings: DemoSettings | None = None, console: Console | None = None) -> DemoReport:
    """Generate, label, train twice, evaluate; prints progress and the results table."""
    import time

    from ..labeling import label_images

    settings = settings or DemoSettings()
    console = console or Console(stderr=True, soft_wrap=True)
    out = Path(out)
    report = DemoReport(out)
    data, labels = out / "data", out / "labels"

    start = time.perf_counter()
    console.rule("1/5 demo data")
    summary = generate_demo(data, n=settings.n, seed=settings.seed, size=settings.scene_size)
    console.print(f"{sum(summary.images.values())} scenes ({', '.join(f'{k} {v}' for k, v in summary.images.items())}) in {data}")
    report.seconds["data"] = time.perf_counter() - start

    start = time.perf_counter()
    console.rule("2/5 expert labels: edge, ocr")
    experts = RUNS[0][1]
    for split in summary.images:
        done = label_images(summary.manifest(split), experts, labels, console=console)
        console.print(f"{split}: labelled {done.labelled} images, {done.skipped_done} already done")
    report.seconds["labels"] = time.perf_counter() - start

    for index, (name, run_experts) in enumerate(RUNS, start=1):
        start = time.perf_counter()
        what = ",".join(run_experts) if run_experts else "none (PrismerZ, RGB only)"
        console.rule(f"3/5 training {index}/{len(RUNS)}: experts {what}")
        folder = out / "runs" / name
        config = settings.train_config(folder, data, labels, run_experts)
        report.runs[name] = train(config, resume=RunDir(folder).exists(), console=console)
        report.seconds[f"train {name}"] = time.perf_counter() - start

    console.rule("4/5 training results")
    console.print("train and validation loss are the cross-entropy per caption/answer token; the contrastive "
                  "loss is the last step's InfoNCE over the batch's image-caption pairs:")
    console.print(results_table(report))
    for name, result in report.runs.items():
        console.print(f"{name}: checkpoint {result.checkpoint}; loss curves {result.plot}")
    console.rule("5/5 evaluation on the test split")
    start = time.perf_counter()
    report.evaluation = evaluate_trained(report, data / "test.jsonl", labels, console)
    report.seconds["evaluation"] = time.perf_counter() - start
    console.print("time: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in report.seconds.items()))
    return report


def results_table(report: DemoReport) -> Table:
    """What training measured: final training and validation losses, throughput."""
    table = Table()
    for column in ("run", "experts", "steps", "train loss", "contrastive loss", "val loss caption", "val loss vqa", "images/s"):
        table.add_column(column)
    for name, result in report.runs.items():
        experts = ",".join(e for n, experts in RUNS if n == name for e in experts) or "-"
        val = result.val_loss
        table.add_row(
            name, experts, str(result.step), _number(result.last_loss), _number(result.last_contrastive_loss),
            _number(val.get("caption")), _number(val.get("vqa")), f"{result.images_per_second:.1f}",
        )
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def evaluate_trained(report: DemoReport, test_manifest: Path, labels: Path, console: Console) -> dict[str, dict[str, float]]:
    """The evaluation table of both runs on the test split (VQA accuracy, caption CIDEr and
    BLEU-4), by the same code as `prismer eval` (:func:`prismer_core.demo.evaluate_demo`)."""
    names = {"experts": "edge+ocr", "rgb": "PrismerZ"}
    runs = {names.get(name, name): result.checkpoint for name, result in report.runs.items()}
    return evaluate_runs(runs, test_manifest, report.out / "eval", labels=labels, console=console)
