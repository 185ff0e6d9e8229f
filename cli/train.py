"""`prismer train`: parse the flags into a TrainConfig and hand it to prismer_core.train.

Every flag's default and help text is the TrainConfig field's (prismer_core/train/config.py).
"""

from __future__ import annotations

from pathlib import Path

import typer

from prismer_core.train.config import TrainConfig

from .app import setting

C = TrainConfig


def train(
    data: list[Path] = setting(C, "data", "--data", "-d", default=...),
    spec: str = setting(C, "spec", "--spec"),
    experts: str = setting(C, "experts", "--experts", "-e", default=""),
    task: str = setting(C, "tasks", "--task", default="caption"),
    out: Path = setting(C, "out", "--out", "-o", default=None),
    max_steps: int = setting(C, "max_steps", "--max-steps"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint (same settings, same data order)."),
    init_from: str = setting(C, "init_from", "--init-from", metavar="RUN"),
    expert_dropout: float = setting(C, "expert_dropout", "--expert-dropout", metavar="P"),
    labels: Path = setting(C, "labels", "--labels"),
    val_data: list[Path] = setting(C, "val_data", "--val-data"),
    image_root: Path = setting(C, "image_root", "--image-root"),
    batch_size: int = setting(C, "batch_size", "--batch-size", "-b"),
    lr: float = setting(C, "lr", "--lr"),
    lr_scale: list[str] = typer.Option([], "--lr-scale", metavar="PART=FACTOR", help="Train a model part at FACTOR × --lr, e.g. --lr-scale vision.backbone=0.1 (repeatable; parts as in `prismer model info`)."),
    weight_decay: float = setting(C, "weight_decay", "--weight-decay"),
    warmup_steps: int = setting(C, "warmup_steps", "--warmup-steps"),
    grad_clip: float = setting(C, "grad_clip", "--grad-clip"),
    clip_each_loss: bool = setting(C, "clip_each_loss", "--clip-each-loss/--clip-summed"),
    precision: str = setting(C, "precision", "--precision"),
    engine: str = setting(C, "engine", "--engine"),
    deepspeed_config: Path = setting(C, "deepspeed_config", "--deepspeed-config"),
    device: str = setting(C, "device", "--device"),
    workers: int = setting(C, "workers", "--workers"),
    threads: int = setting(C, "threads", "--threads"),
    seed: int = setting(C, "seed", "--seed"),
    on_bad_row: str = setting(C, "on_bad_row", "--on-bad-row"),
    crop_scale: float = setting(C, "crop_scale", "--crop-scale"),
    hflip: float = setting(C, "hflip", "--hflip"),
    group_by_task: bool = setting(C, "group_by_task", "--group-by-task"),
    group_by_image: bool = setting(C, "group_by_image", "--group-by-image"),
    max_text_length: int = setting(C, "max_text_length", "--max-text-length"),
    caption_prompt: str = setting(C, "caption_prompt", "--caption-prompt"),
    contrastive_weight: float = setting(C, "contrastive_weight", "--contrastive-weight"),
    log_every: int = setting(C, "log_every", "--log-every"),
    eval_every: int = setting(C, "eval_every", "--eval-every"),
    eval_samples: int = setting(C, "eval_samples", "--eval-samples"),
    checkpoint_every: int = setting(C, "checkpoint_every", "--checkpoint-every"),
    keep_checkpoints: int = setting(C, "keep_checkpoints", "--keep-checkpoints"),
    spec_set: list[str] = typer.Option([], "--spec-set", metavar="FIELD=VALUE", help="Override a spec field, e.g. --spec-set image_size=128 (repeatable)."),
    assignments: list[str] = typer.Option([], "--set", metavar="NAME.KEY=VALUE", help="An expert setting for experts run on the fly (repeatable). With --labels the experts do not run: a value other than the one the labels were made with is refused."),
) -> None:
    """Train a Prismer model on captions and/or questions, with or without experts.

    Writes OUT/run.json, OUT/metrics.jsonl, OUT/loss.png and checkpoints under
    OUT/checkpoints/ (the latest complete one is named in OUT/checkpoints/latest.json).
    Ctrl-C saves a checkpoint first; continue with the same command plus --resume.
    --init-from RUN --experts edge,ocr,depth starts from RUN's weights and adds a fresh stem for depth.
    For several processes launch with `torchrun --nproc_per_node N -m prismer_cli.main train …`.
    """
    from prismer_core.experts.settings import parse_assignments, parse_key_values, parse_yaml_values
    from prismer_core.registry import parse_expert_names
    from prismer_core.train import train as run_training

    names = parse_expert_names(experts)
    paths = {"labels": labels, "image_root": image_root, "deepspeed_config": deepspeed_config}
    name = Path(spec).stem if spec else f"from-{Path(init_from).name}" if init_from else "tiny"
    config = TrainConfig(
        data=[str(p) for p in data], out=str(out or Path("runs") / f"{name}-{'-'.join(names) or 'rgb'}"),
        spec=spec, experts=names, init_from=init_from, expert_dropout=expert_dropout, tasks=task.split(","), val_data=[str(p) for p in val_data],
        spec_overrides=parse_yaml_values(spec_set, "--spec-set", "image_size=128"),
        expert_settings=parse_assignments(assignments, known_experts=names) if assignments else {},
        **{key: str(value) if value is not None else None for key, value in paths.items()},
        max_steps=max_steps, batch_size=batch_size, lr=lr,
        lr_scales=parse_key_values(lr_scale, "--lr-scale", "vision.backbone=0.1"), weight_decay=weight_decay, warmup_steps=warmup_steps,
        grad_clip=grad_clip, clip_each_loss=clip_each_loss, precision=precision, engine=engine, device=device, workers=workers, threads=threads,
        seed=seed, on_bad_row=on_bad_row, crop_scale=crop_scale, hflip=hflip, group_by_task=group_by_task,
        group_by_image=group_by_image,
        max_text_length=max_text_length, caption_prompt=caption_prompt, contrastive_weight=contrastive_weight,
        log_every=log_every, eval_every=eval_every,
        eval_samples=eval_samples, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
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
