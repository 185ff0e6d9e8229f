"""`prismer train`: the training loop, from manifests and experts to checkpoints and curves.

The order of work is chosen so that mistakes surface before anything expensive: settings,
then experts (unknown / not ready), then the data (bad rows with file:line), then the run
folder (refusing to overwrite another run), and only then the model.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..checkpoint import read_checkpoint_info
from ..data.dataset import Batch, Collator, DataProblem, TrainingData, training_texts
from ..data.encoding import SampleEncoder
from ..data.labels import LabelSource, LiveLabels, StoredLabels
from ..data.manifest import BadRowError, SampleSet, load_data
from ..data.transforms import PairedTransform
from ..errors import PrismerError
from ..model import Prismer, build_model
from ..progress import make_progress
from ..registry import get_registry
from ..semantic import LabelEncoder, load_label_encoder
from ..specs import DecoderSpec, ModelSpec, load_spec
from ..text import TextCodec
from .config import TrainConfig
from .distributed import Distributed, choose_engine, setup_distributed
from .engine import Engine, clips_each_loss, make_engine
from .init_from import Parent, model_from_parent, read_parent
from .run_dir import RunDir, RunDirError
from .sampler import EvalSampler, StepSampler
from .state import restore_rng, save_rng
from .utilisation import counted_flops, mfu, significant

LABEL_ENCODER_FILE = "label_encoder.safetensors"


@dataclass
class TrainResult:
    """What a run did: where it stopped, where its files are, what it skipped."""

    out: Path
    step: int
    max_steps: int
    checkpoint: Path | None
    plot: Path
    metrics: Path
    interrupted: bool = False
    skipped_rows: list[str] = field(default_factory=list)
    images_per_second: float = 0.0
    #: FLOPs of one training image (forward and backward, counted on the first step), and the
    #: model FLOPs utilisation of the whole run against the devices' peak (None: peak unknown)
    flops_per_image: float | None = None
    mfu: float | None = None
    last_loss: float | None = None
    #: The contrastive loss of the last step (None: trained without the contrastive pass).
    last_contrastive_loss: float | None = None
    val_loss: dict[str, float] = field(default_factory=dict)
    is_main: bool = True  # False in the other processes of a distributed run


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a flag the loop checks between steps,
    so the run saves a checkpoint before exiting; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)


def _ignore_sigint_in_worker(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which shuts them down in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train(config: TrainConfig, resume: bool = False, console: Console | None = None, show_progress: bool = True) -> TrainResult:
    """Run (or resume) training as ``config`` says; see the module docstring for the order."""
    config.validate()
    console = console or Console(stderr=True, soft_wrap=True)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    ctx = setup_distributed(config.device)
    try:
        return _train(config, resume, ctx, console if ctx.is_main else Console(quiet=True), show_progress and ctx.is_main)
    finally:
        ctx.close()
        torch.set_num_threads(threads)


def _train(config: TrainConfig, resume: bool, ctx: Distributed, console: Console, show_progress: bool) -> TrainResult:
    if config.spec is not None:  # a contrastive weight the spec cannot use is refused before any work
        config.contrastive_weight_for(load_spec(config.spec, config.spec_overrides or None))
    specs = require_experts(config)
    parent = _parent(config, specs) if config.init_from and not resume else None
    labels = label_source(config, specs)
    data = load_data(config.data, config.tasks, config.on_bad_row)
    val = load_data(config.val_data, config.tasks, config.on_bad_row) if config.val_data else None
    _report_rows(console, data, val)

    run = RunDir(config.out)
    latest = _prepare_run(run, config, resume, ctx)
    if config.init_from and latest is None and parent is None:  # resuming a run that never saved
        parent = _parent(config, specs)
    engine_name = choose_engine(config.engine, ctx)

    torch.manual_seed(config.seed)  # the same initial weights on every rank and every run
    if latest is not None:
        model = Prismer.from_pretrained(latest[1], experts=specs)
    elif parent is not None:
        parent = replace(parent, spec=with_output_vocabulary(parent.spec, config, [data, val], parent.info.spec))
        model = model_from_parent(parent, specs)
        new = ", ".join(parent.new_experts) or "none"
        console.print(f"starting from {parent.info.directory} (experts {', '.join(parent.info.experts) or 'none'}; new: {new})")
    else:
        model = build_model(with_output_vocabulary(load_spec(config.spec, config.spec_overrides or None), config, [data, val]), specs)
    encoder = label_encoder_for(specs, latest[1] if latest else parent.info.directory if parent else None)

    torch.manual_seed(config.seed + ctx.rank)  # dropout differs between ranks
    # closed before the process group goes (``Distributed.close``): DeepSpeed's engine lives
    # on in reference cycles, with the group's threads, until it is destroyed
    with closing(make_engine(engine_name, model, config, ctx)) as engine:
        if clips_each_loss(config, engine.contrastive_weight) and not engine.clips_each_loss:
            console.print(f"[yellow]note:[/yellow] the {engine.name} engine clips the summed gradient of the two passes: "
                          "clipping each loss on its own (--clip-each-loss) is not implemented for it")
        start_step, skipped = 0, []
        if latest is not None:
            extra = engine.load_state(latest[1] / "trainer")
            start_step, skipped = int(extra["step"]), list(extra.get("skipped_rows", []))
            if ctx.is_main:
                run.truncate_metrics(start_step)
            console.print(f"resuming {run.root} from step {start_step} ({latest[1].name})")
        lineage = parent.record() if parent is not None else (run.read_config().get("parent") if latest is not None else None)
        if ctx.is_main:
            _write_run_record(run, config, engine, specs, labels, encoder, ctx, lineage)
            if encoder is not None:  # copied into every checkpoint
                encoder.save(run.root / LABEL_ENCODER_FILE)

        model = engine.model
        contrastive = config.contrastive_weight_for(model.spec) > 0  # the model's spec: with --init-from, its parent's
        train_set = training_data(config, model, specs, data.samples, labels, encoder, describe=contrastive)
        collate = collator(config, model, contrastive=contrastive)
        sampler = StepSampler(len(train_set), config.batch_size, config.max_steps, config.seed, ctx.rank, ctx.world_size,
                              start_step, groups=[s.task for s in data.samples] if config.group_by_task else None)
        loader = _loader(train_set, sampler, collate, config.workers, ctx)
        evaluator = _Evaluator(val, config, train_set, collate, engine, ctx) if val else None

        skipped = list(dict.fromkeys([str(row) for row in data.bad_rows] + skipped))
        loop = _Loop(config, ctx, engine, run, console, specs, encoder, skipped, start_step, len(train_set), lineage, data)
        with StopRequest().installed() as stop:
            loop.run(loader, stop, evaluator, show_progress, latest[1] / "trainer" if latest else None)
        return loop.result


class _Loop:
    """The steps themselves, with logging, evaluation, checkpoints and stop requests."""

    def __init__(self, config: TrainConfig, ctx: Distributed, engine: Engine, run: RunDir, console: Console,
                 specs: dict, encoder: Any, skipped: list[str], start_step: int, num_samples: int,
                 parent: dict[str, Any] | None = None, data: SampleSet | None = None) -> None:
        self.config, self.ctx, self.engine, self.run_dir, self.console = config, ctx, engine, run, console
        self.specs, self.encoder = specs, encoder
        self.parent, self.data = parent, data
        self.skipped = skipped
        self.num_samples = num_samples
        self.step = start_step
        self.saved_step = start_step if start_step else -1
        self.result = TrainResult(run.root, start_step, config.max_steps, None, run.plot_path, run.metrics_path,
                                  is_main=ctx.is_main)

    def run(self, loader, stop: StopRequest, evaluator: "_Evaluator | None", show_progress: bool,
            resume_from: Path | None = None) -> None:
        config, ctx = self.config, self.ctx
        batches = iter(loader)  # draws from the RNG, as it did when the run started
        if resume_from is not None:
            restore_rng(resume_from)
        window_start, window_images = time.perf_counter(), 0
        started, images_total = time.perf_counter(), 0
        flops_per_image: float | None = None
        with make_progress(self.console, show_progress, "loss {task.fields[loss]}", "{task.fields[speed]} img/s",
                           "MFU {task.fields[mfu]}") as progress:
            task = progress.add_task("training", total=config.max_steps, completed=self.step, loss="-", speed="-", mfu="-")
            while self.step < config.max_steps:
                batch = next(batches)
                problem = self._problems(batch)
                interrupted, failed = ctx.max(float(stop.signal is not None), float(problem is not None))
                if failed:
                    self._save()
                    raise problem if problem is not None else PrismerError("stopped: another process hit a data problem (see its message)")
                if interrupted:
                    self._save()
                    self.result.interrupted = True
                    break
                assert isinstance(batch, Batch)
                lr = self.engine.lr  # the rate this step uses
                if flops_per_image is None:  # the first step is counted, for the utilisation
                    loss, flops = counted_flops(lambda: self.engine.step(batch))
                    flops_per_image = flops / batch.size
                else:
                    loss = self.engine.step(batch)
                self.step += 1
                window_images += batch.size * ctx.world_size
                images_total += batch.size * ctx.world_size
                (mean_loss,) = ctx.sum(loss / ctx.world_size)
                self.result.last_loss = mean_loss
                contrastive = self.engine.last_contrastive  # the same global value on every process
                self.result.last_contrastive_loss = contrastive
                reconstruction = self.engine.last_reconstruction  # every process has one, or none has
                if reconstruction is not None:
                    (reconstruction,) = ctx.sum(reconstruction / ctx.world_size)
                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    elapsed = time.perf_counter() - window_start
                    speed = window_images / elapsed if elapsed > 0 else 0.0
                    epoch = self.step * config.batch_size * ctx.world_size / self.num_samples
                    utilisation = mfu(speed, flops_per_image, str(ctx.device), ctx.world_size)
                    self._log({"step": self.step, "loss": round(mean_loss, 5), "lr": lr,
                               **({"contrastive_loss": round(contrastive, 5)} if contrastive is not None else {}),
                               **({"reconstruction_loss": round(reconstruction, 5)} if reconstruction is not None else {}),
                               "images_per_s": round(speed, 2), "epoch": round(epoch, 3),
                               "mfu": significant(utilisation)})
                    progress.update(task, loss=f"{mean_loss:.3f}", speed=f"{speed:.1f}",
                                    mfu=f"{utilisation:.1%}" if utilisation is not None else "-")
                    window_start, window_images = time.perf_counter(), 0
                progress.update(task, completed=self.step)
                if evaluator and config.eval_every and self.step % config.eval_every == 0 and self.step < config.max_steps:
                    self._evaluate(evaluator)
                if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < config.max_steps:
                    self._save()
        if not self.result.interrupted:
            if evaluator:
                self._evaluate(evaluator)
            self._save()
        seconds = time.perf_counter() - started
        self.result.images_per_second = images_total / seconds if seconds > 0 else 0.0
        self.result.flops_per_image = flops_per_image
        self.result.mfu = mfu(self.result.images_per_second, flops_per_image or 0, str(ctx.device), ctx.world_size)
        self.result.step = self.step
        self.result.skipped_rows = self.skipped

    def _problems(self, batch: Batch | list[DataProblem]) -> PrismerError | None:
        """Apply the bad-row policy to the samples left out of this batch."""
        problems = batch if isinstance(batch, list) else batch.problems
        for problem in problems:
            if problem.fatal:
                return PrismerError(str(problem))
            if self.config.on_bad_row == "stop":
                return BadRowError(f"{problem} (pass --on-bad-row skip to skip bad rows)")
            if str(problem) not in self.skipped:
                self.skipped.append(str(problem))
                self.console.print(f"[yellow]skipping[/yellow] {problem}")
        if isinstance(batch, list):
            return PrismerError(f"every sample of a batch was unusable, the first: {problems[0]}")
        return None

    def _log(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            self.run_dir.log(record)

    def _evaluate(self, evaluator: "_Evaluator") -> None:
        losses = evaluator.losses()
        self.result.val_loss = losses
        self._log({"step": self.step, **{f"val_loss_{task}": round(v, 5) for task, v in losses.items()}})
        shown = ", ".join(f"{task} {v:.3f}" for task, v in losses.items())
        self.console.print(f"step {self.step}: validation loss {shown}")
        if self.ctx.is_main:
            self.run_dir.plot(self._title())

    def _title(self) -> str:
        experts = ",".join(self.specs) or "none (PrismerZ)"
        return f"{self.config.spec or self.engine.model.spec.name}, experts: {experts}, tasks: {'+'.join(self.config.tasks)}"

    def _save(self) -> None:
        """Write checkpoints/step-N (model + training state) and point latest.json at it."""
        if self.step == self.saved_step or self.step == 0:
            return
        folder = self.run_dir.checkpoint_path(self.step)
        # Not atomic.staged_directory: every rank writes its share of the training state into
        # this folder between barriers, so it needs a name all ranks know, not a random one.
        partial = folder.parent / f".{folder.name}.trainer.partial"
        extra = {"training": {"step": self.step, "tasks": self.config.tasks, "caption_prompt": self.config.caption_prompt,
                              "max_text_length": self.config.max_text_length, "run": str(self.run_dir.root),
                              **self._card_facts()}}
        if self.ctx.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            if folder.exists():
                shutil.rmtree(folder)
            encoder_file = self.run_dir.root / LABEL_ENCODER_FILE
            self.engine.model.save_pretrained(
                folder, extra,
                label_encoder=self.encoder.identity if self.encoder is not None else None,
                label_encoder_file=encoder_file if self.encoder is not None else None,
            )
            partial.mkdir(parents=True)
        self.ctx.barrier()
        if self.ctx.is_main:
            save_rng(partial)
        self.engine.save_state(partial, {"step": self.step, "skipped_rows": self.skipped, "engine": self.engine.name,
                                         "world_size": self.ctx.world_size})
        self.ctx.barrier()
        if self.ctx.is_main:
            os.replace(partial, folder / "trainer")
            self.run_dir.mark_latest(self.step, folder, self.config.keep_checkpoints)
            self.run_dir.plot(self._title())
        self.ctx.barrier()
        self.saved_step = self.step
        self.result.checkpoint = folder


    def _card_facts(self) -> dict[str, Any]:
        """What the checkpoint's model card says of its training: data, dropout, parent, losses."""
        facts: dict[str, Any] = {"data": self.config.data, "val_data": self.config.val_data,
                                 "expert_dropout": self.config.expert_dropout, "max_steps": self.config.max_steps}
        if self.data is not None:
            facts["samples"] = {task: self.data.count(task) for task in self.config.tasks}
        if self.parent is not None:
            facts["parent"] = self.parent
        if self.result.val_loss:
            facts["val_loss"] = {task: round(loss, 5) for task, loss in self.result.val_loss.items()}
        return facts


class _Evaluator:
    """Validation loss per task on the first ``eval_samples`` samples of each task."""

    def __init__(self, val: SampleSet, config: TrainConfig, train_set: TrainingData, collate: Collator, engine: Engine, ctx: Distributed) -> None:
        self.loaders = {}
        for task in config.tasks:
            samples = [s for s in val.samples if s.task == task]
            if not samples:
                continue
            data = TrainingData(samples, train_set.encoder.for_evaluation(), train_set.labels, train_set.caption_prompt)
            sampler = EvalSampler(len(samples), config.batch_size, ctx.rank, ctx.world_size, config.eval_samples)
            self.loaders[task] = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=0)
        self.engine, self.ctx = engine, ctx

    def losses(self) -> dict[str, float]:
        result = {}
        for task, loader in self.loaders.items():
            total, tokens = 0.0, 0
            for batch in loader:
                if isinstance(batch, Batch):
                    loss_sum, count = self.engine.evaluate(batch)
                    total, tokens = total + loss_sum, tokens + count
            total, tokens = self.ctx.sum(total, tokens)
            if tokens:
                result[task] = total / tokens
        return result


def _loader(dataset: TrainingData, sampler: StepSampler, collate: Collator, workers: int, ctx: Distributed):
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
        pin_memory=ctx.device.type == "cuda", worker_init_fn=_ignore_sigint_in_worker if workers else None,
        prefetch_factor=4 if workers else None,
    )


def _prepare_run(run: RunDir, config: TrainConfig, resume: bool, ctx: Distributed) -> tuple[int, Path] | None:
    """Refuse to overwrite another run; on resume, refuse changed settings. Returns the
    checkpoint to resume from (None: start from step 0)."""
    if not resume:
        if run.exists():
            raise RunDirError(f"{run.root} already holds a run: pass --resume to continue it, or choose another --out")
        return None
    if not run.exists():
        raise RunDirError(f"nothing to resume in {run.root} (no run.json): drop --resume to start a new run")
    saved = TrainConfig.from_dict(run.read_config()["config"])
    differences = config.differences(saved)
    if differences:
        raise RunDirError(f"--resume with other settings than the run in {run.root}: {'; '.join(differences)}")
    latest = run.latest()
    if latest is not None:
        recorded = run.read_config()
        if recorded.get("world_size", ctx.world_size) != ctx.world_size:
            raise RunDirError(
                f"{run.root} was trained with {recorded['world_size']} processes, now {ctx.world_size}: "
                "the data order depends on it; resume with the same number"
            )
    return latest


def require_experts(config: TrainConfig) -> dict:
    """The run's expert specs, checked: unknown or not-ready experts are a clear error (experts
    run on the fly must be ready to run; read from a label store, only known)."""
    return get_registry().require(config.experts, live=config.labels is None, settings=config.expert_settings)


def with_output_vocabulary(spec: ModelSpec, config: TrainConfig, sets: Sequence[SampleSet | None],
                           parent: ModelSpec | None = None) -> ModelSpec:
    """The run's spec, its decoder writing every token of the run's targets when the spec asks
    for that (``decoder.output_vocabulary: data``, or a list, which is extended); the ids of a
    parent checkpoint's list are kept, so what it wrote it can still write."""
    decoder = spec.decoder
    if not isinstance(decoder, DecoderSpec) or decoder.output_vocabulary == "full":
        return spec
    pairs = (pair for samples in sets if samples is not None for sample in samples.samples
             for pair in training_texts(sample, config.caption_prompt))
    ids = set(TextCodec.for_decoder(decoder).output_vocabulary(pairs)) | set(decoder.output_ids or ())
    if parent is not None and isinstance(parent.decoder, DecoderSpec):
        ids |= set(parent.decoder.output_ids or ())
    return spec.with_overrides({"decoder.output_vocabulary": sorted(ids)})


def training_data(config: TrainConfig, model: Prismer, specs: dict, samples, labels: LabelSource | None,
                  encoder: Any, describe: bool = False) -> TrainingData:
    """The dataset a run trains on: its samples through the model's :class:`SampleEncoder` with
    training's crop and flip (``.encoder.for_evaluation()`` gives the eval-mode one)."""
    sample_encoder = SampleEncoder(PairedTransform(model.image_size, True, (config.crop_scale, 1.0), config.hflip),
                                   model.image_mean, model.image_std, specs, encoder)
    return TrainingData(samples, sample_encoder, labels, config.caption_prompt, config.expert_dropout, describe=describe,
                        by_image=config.group_by_image)


def collator(config: TrainConfig, model: Prismer, contrastive: bool = False) -> Collator:
    """Batches of the run's samples, text through the model's :class:`TextCodec` (with the
    contrastive pass's descriptions when ``contrastive``)."""
    return Collator(TextCodec.for_decoder(model.spec.decoder), config.max_text_length, contrastive=contrastive)


def label_source(config: TrainConfig, specs: dict) -> LabelSource | None:
    """Where the expert maps come from; a label store is checked here, before any run folder
    is touched (versions, and settings given that differ from those it was made with)."""
    if not specs:
        return None
    if config.labels:
        return StoredLabels(config.labels, specs, settings=config.expert_settings)
    return LiveLabels(config.experts, settings=config.expert_settings)


def _parent(config: TrainConfig, specs: dict) -> Parent:
    assert config.init_from
    return read_parent(config.init_from, config.spec, config.spec_overrides, specs)


def _write_run_record(
    run: RunDir, config: TrainConfig, engine: Engine, specs: dict, labels: LabelSource | None, encoder: Any, ctx: Distributed,
    parent: dict[str, Any] | None = None,
) -> None:
    model = engine.model
    run.write_config({
        **({"parent": parent} if parent is not None else {}),
        "config": config.to_dict(),
        "spec": model.spec.to_dict(),
        "experts": {
            name: {**{k: v for k, v in s.record().items() if k != "name"}, "settings": labels.settings_of(name)}
            for name, s in specs.items()
        },
        "label_encoder": encoder.identity if encoder is not None else None,
        "engine": engine.name,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "precision": str(engine.dtype).replace("torch.", ""),
        "parameters": {part: {"total": c.total, "trainable": c.trainable} for part, c in model.parameter_report().items()},
    })


def label_encoder_for(specs: dict, checkpoint: Path | None = None):
    """The label encoder for semantic experts: the checkpoint's own copy when resuming, so
    the maps keep meaning what they meant."""
    if not any(spec.is_semantic for spec in specs.values()):
        return None
    if checkpoint is not None:
        saved = read_checkpoint_info(checkpoint).label_encoder_file
        if saved is not None and saved.is_file():
            return LabelEncoder.load(saved)
    return load_label_encoder()


def _report_rows(console: Console, data: SampleSet, val: SampleSet | None) -> None:
    for name, dataset in (("training", data), ("validation", val)):
        if dataset is None:
            continue
        counts = ", ".join(f"{dataset.count(t)} {t}" for t in ("caption", "vqa") if dataset.count(t))
        console.print(f"{name} data: {counts} samples from {', '.join(dataset.sources)}")
        if dataset.bad_rows:
            console.print(f"[yellow]skipped {len(dataset.bad_rows)} bad rows[/yellow], the first: {dataset.bad_rows[0]}")
