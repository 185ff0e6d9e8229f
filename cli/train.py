"""`prismer train`: parse the flags into a TrainConfig and hand it to prismer_core.train."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    data: list[Path] = typer.Option(..., "--data", "-d", help="Training manifest: JSONL, COCO captions .json, a .tar shard or a folder of shards (repeatable)."),
    spec: str = typer.Option("tiny", "--spec", help="Model spec: a bundled name (tiny, base, large) or a .yaml file."),
    experts: str = typer.Option("", "--experts", "-e", help="Comma-separated experts, e.g. edge,ocr; empty trains PrismerZ (RGB only)."),
    task: str = typer.Option("caption", "--task", help="caption, vqa, or caption,vqa (rows of a manifest are used for the tasks whose keys they have)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder [default: runs/SPEC-EXPERTS]."),
    max_steps: int = typer.Option(1000, "--max-steps", help="Optimisation steps to train for (in all, counting resumed ones)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint (same settings, same data order)."),
    labels: Path = typer.Option(None, "--labels", help="Label store from `prismer label` to read expert maps from; without it experts run on the fly."),
    val_data: list[Path] = typer.Option([], "--val-data", help="Validation manifest (repeatable): its loss is logged and plotted."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Samples per step and process."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (AdamW)."),
    lr_scale: list[str] = typer.Option([], "--lr-scale", metavar="PART=FACTOR", help="Train a model part at FACTOR × --lr, e.g. --lr-scale vision.backbone=0.1 (repeatable; parts as in `prismer model info`)."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", help="AdamW weight decay (weight matrices only)."),
    warmup_steps: int = typer.Option(None, "--warmup-steps", help="Linear warm-up steps before the cosine decay [default: 5% of --max-steps]."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Clip the gradient norm to this (0: no clipping)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 or fp16 on GPUs, fp32 on CPU), fp32, bf16, fp16."),
    engine: str = typer.Option("auto", "--engine", help="auto (DeepSpeed ZeRO-2 on GPUs when installed, DDP for several CPU processes), plain, ddp, deepspeed."),
    deepspeed_config: Path = typer.Option(None, "--deepspeed-config", help="DeepSpeed JSON config [default: the bundled ZeRO-2 one]; batch size, clipping and precision come from these flags."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 … (torchrun processes take their LOCAL_RANK GPU)."),
    workers: int = typer.Option(2, "--workers", help="Data loader processes per training process (0: load in the main process)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads of each training process (0: torch's default, one per core)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order, augmentation and initialisation."),
    on_bad_row: str = typer.Option("stop", "--on-bad-row", help="stop at the first bad row (missing key, unreadable image), or skip them and report a count."),
    crop_scale: float = typer.Option(0.5, "--crop-scale", help="Smallest random crop as a share of the image area (1: no cropping)."),
    hflip: float = typer.Option(0.0, "--hflip", help="Probability of a horizontal flip; 'left'/'right' in the text are swapped on flipped samples."),
    group_by_task: bool = typer.Option(False, "--group-by-task", help="Give each batch one task (less padding for short VQA answers; the rarer task gets fewer steps)."),
    max_text_length: int = typer.Option(64, "--max-text-length", help="Tokens per sample (prompt + target), longer ones are cut."),
    caption_prompt: str = typer.Option("", "--caption-prompt", help="Text the caption follows, e.g. 'a picture of' (used again at inference)."),
    log_every: int = typer.Option(1, "--log-every", min=1, help="Write a metrics line every N steps."),
    eval_every: int = typer.Option(0, "--eval-every", min=0, help="Validation loss every N steps (0: at the end only)."),
    eval_samples: int = typer.Option(64, "--eval-samples", min=1, help="Validation samples per task."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", min=0, help="Checkpoint every N steps (0: at the end, and on Ctrl-C)."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", min=1, help="How many of the newest checkpoints to keep."),
    spec_set: list[str] = typer.Option([], "--spec-set", metavar="FIELD=VALUE", help="Override a spec field, e.g. --spec-set image_size=128 (repeatable)."),
    assignments: list[str] = typer.Option([], "--set", metavar="NAME.KEY=VALUE", help="An expert setting for experts run on the fly (repeatable). With --labels the experts do not run: a value other than the one the labels were made with is refused."),
) -> None:
    """Train a Prismer model on captions and/or questions, with or without experts.

    Writes OUT/run.json, OUT/metrics.jsonl, OUT/loss.png and checkpoints under
    OUT/checkpoints/ (the latest complete one is named in OUT/checkpoints/latest.json).
    Ctrl-C saves a checkpoint first; continue with the same command plus --resume.
    For several processes launch with `torchrun --nproc_per_node N -m prismer_cli.main train …`.
    """
    import yaml

    from prismer_core.errors import PrismerError
    from prismer_core.experts.settings import parse_assignments
    from prismer_core.registry import parse_expert_names
    from prismer_core.train import TrainConfig, train as run_training

    names = parse_expert_names(experts)
    overrides = {}
    for item in spec_set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PrismerError(f"--spec-set {item!r}: write FIELD=VALUE, for example image_size=128")
        overrides[key.strip()] = yaml.safe_load(value)
    scales = {}
    for item in lr_scale:
        part, sep, factor = item.partition("=")
        if not sep or not part.strip():
            raise PrismerError(f"--lr-scale {item!r}: write PART=FACTOR, for example vision.backbone=0.1")
        scales[part.strip()] = factor.strip()
    config = TrainConfig(
        data=[str(p) for p in data], out=str(out or Path("runs") / f"{Path(spec).stem}-{'-'.join(names) or 'rgb'}"),
        spec=spec, experts=names, tasks=task.split(","), val_data=[str(p) for p in val_data],
        labels=str(labels) if labels else None, spec_overrides=overrides,
        expert_settings=parse_assignments(assignments, known_experts=names) if assignments else {},
        max_steps=max_steps, batch_size=batch_size, lr=lr, lr_scales=scales, weight_decay=weight_decay, warmup_steps=warmup_steps,
        grad_clip=grad_clip, precision=precision, engine=engine,
        deepspeed_config=str(deepspeed_config) if deepspeed_config else None, device=device, workers=workers, threads=threads,
        seed=seed, on_bad_row=on_bad_row, crop_scale=crop_scale, hflip=hflip, group_by_task=group_by_task, max_text_length=max_text_length,
        caption_prompt=caption_prompt, log_every=log_every, eval_every=eval_every, eval_samples=eval_samples,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
    )
    result = run_training(config, resume=resume)
    if not result.is_main:  # the main process reports for all
        raise typer.Exit(130 if result.interrupted else 0)
    if result.interrupted:
        typer.echo(f"interrupted at step {result.step}; checkpoint: {result.checkpoint}", err=True)
        typer.echo("continue with the same command plus --resume", err=True)
        raise typer.Exit(130)
    typer.echo(f"trained to step {result.step} ({result.images_per_second:.1f} images/s)")
    typer.echo(f"checkpoint: {result.checkpoint}")
    typer.echo(f"loss curves: {result.plot}")
    typer.echo(f"metrics: {result.metrics}")
    if result.skipped_rows:
        typer.echo(f"skipped {len(result.skipped_rows)} bad rows, the first: {result.skipped_rows[0]}", err=True)
