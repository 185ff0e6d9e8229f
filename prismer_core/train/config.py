"""The settings of a training run, saved in the run folder so ``--resume`` can check them.

One pydantic model: its fields are the settings, their defaults and their help texts
(`prismer train --help` is built from them, nothing restated); unknown keys are refused with
the closest known one, bad values with the flag that sets them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..data.manifest import parse_tasks
from ..errors import PrismerError, did_you_mean
from ..specs import PART_NAMES, ModelSpec

TRAIN_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "plain", "ddp", "deepspeed")

#: Settings that may change when a run is resumed; every other one must stay the same,
#: because it changes what the model sees (data, order, augmentation) or how it learns.
RESUMABLE_CHANGES = frozenset(
    {"out", "max_steps", "workers", "log_every", "eval_every", "eval_samples", "checkpoint_every",
     "keep_checkpoints", "device", "engine", "deepspeed_config", "on_bad_row", "threads"}
)


class TrainConfig(BaseModel):
    """Everything ``prismer train`` needs; the CLI only fills this in."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: list[str] = Field(description="Training manifest: JSONL, COCO captions / VQAv2 questions / BLIP-style .json, a .tar shard or a folder of shards (repeatable).")
    out: str = Field(description="Run folder [default: runs/SPEC-EXPERTS].")
    spec: str | None = Field(None, description="Model spec: a bundled name (tiny, base, large, smol) or a .yaml file [default: tiny; with --init-from, the checkpoint's].")
    experts: list[str] = Field(default_factory=list, description="Comma-separated experts, e.g. edge,ocr; empty trains PrismerZ (RGB only).")
    tasks: list[str] = Field(default_factory=lambda: ["caption"], description="caption, vqa, or caption,vqa (rows of a manifest are used for the tasks whose keys they have).")
    val_data: list[str] = Field(default_factory=list, description="Validation manifest (repeatable): its loss is logged and plotted.")
    image_root: str | None = Field(None, description="Folder the manifests' image paths are relative to [default: each manifest's folder].")
    labels: str | None = Field(None, description="Label store from `prismer label` to read expert maps from; without it experts run on the fly.")
    spec_overrides: dict[str, Any] = Field(default_factory=dict, description="Spec fields replaced for this run, e.g. {'image_size': 128}.")
    expert_settings: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Settings of experts run on the fly, {expert: {key: value}}.")
    expert_dropout: float = Field(0.0, ge=0, lt=1, description="Probability that a training sample goes without an expert's map, drawn for each expert and sample (the model masks it), so the model also answers with fewer experts.")
    init_from: str | None = Field(None, description="Start from this checkpoint's weights (a checkpoint or run folder, or a Hugging Face Hub id): its experts load exactly, experts new in --experts get a fresh stem.")
    max_steps: int = Field(1000, ge=1, description="Optimisation steps to train for (in all, counting resumed ones).")
    batch_size: int = Field(8, ge=1, description="Samples per step and process.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    lr_scales: dict[str, float] = Field(default_factory=dict, description="Factors of --lr per model part, e.g. {'vision.backbone': 0.1}; parts not named train at --lr.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (weight matrices only).")
    warmup_steps: int | None = Field(None, ge=0, description="Linear warm-up steps before the cosine decay [default: 5% of --max-steps].")
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: no clipping).")
    clip_each_loss: bool = Field(True, description="With the contrastive pass: clip the generative and the contrastive gradient to --grad-clip each on its own, then add them, so a spike in one cannot shrink the other's update (docs/benchmarks.md); costs a second backward pass through the shared layers. Not under DeepSpeed, which clips the sum.")
    precision: Literal[TRAIN_PRECISIONS] = Field("auto", description="auto (bf16 or fp16 on GPUs, fp32 on CPU), fp32, bf16, fp16.")  # type: ignore[valid-type]
    engine: Literal[ENGINES] = Field("auto", description="auto (DeepSpeed ZeRO-2 on GPUs when installed, DDP for several CPU processes), plain, ddp, deepspeed.")  # type: ignore[valid-type]
    deepspeed_config: str | None = Field(None, description="DeepSpeed JSON config [default: the bundled ZeRO-2 one]; batch size, clipping and precision come from these flags.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 … (torchrun processes take their LOCAL_RANK GPU).")
    workers: int = Field(2, ge=0, description="Data loader processes per training process (0: load in the main process).")
    threads: int = Field(0, ge=0, description="CPU threads of each training process (0: torch's default, one per core).")
    seed: int = Field(0, description="Seed of the data order, augmentation and initialisation.")
    on_bad_row: Literal["stop", "skip"] = Field("stop", description="stop at the first bad row (missing key, unreadable image), or skip them and report a count.")
    crop_scale: float = Field(0.5, gt=0, le=1, description="Smallest random crop as a share of the image area (1: no cropping).")
    hflip: float = Field(0.0, ge=0, le=1, description="Probability of a horizontal flip; 'left'/'right' in the text are swapped on flipped samples.")
    group_by_task: bool = Field(False, description="Give each batch one task (the rarer task then gets fewer steps; rows are decoded in length buckets either way).")
    group_by_image: bool = Field(False, description="Batch images, not rows: each image comes with all its captions and questions, encoded once (--batch-size counts images).")
    max_text_length: int = Field(64, ge=4, description="Tokens per sample (prompt + target), longer ones are cut.")
    caption_prompt: str = Field("", description="Text the caption follows, e.g. 'a picture of' (used again at inference).")
    contrastive_weight: float | None = Field(None, ge=0, description="Weight of the contrastive (retrieval) loss added to the generative one; needs a spec with the contrastive pass (--spec-set contrastive.enabled=true) [default: 1 with it, 0 without].")
    log_every: int = Field(1, ge=1, description="Write a metrics line every N steps.")
    eval_every: int = Field(0, ge=0, description="Validation loss every N steps (0: at the end only).")
    eval_samples: int = Field(64, ge=1, description="Validation samples per task.")
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: at the end, and on Ctrl-C).")
    keep_checkpoints: int = Field(2, ge=1, description="How many of the newest checkpoints to keep.")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise config_error(exc, type(self)) from None

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        return list(parse_tasks(tasks))

    @field_validator("lr_scales", mode="before")
    @classmethod
    def _known_parts(cls, scales: dict[str, Any]) -> dict[str, float]:
        return check_lr_scales(scales)

    @model_validator(mode="after")
    def _some_data(self) -> "TrainConfig":
        if not self.data:
            raise ValueError("no training data given (pass --data MANIFEST)")
        if self.group_by_task and self.group_by_image:
            raise ValueError("--group-by-task and --group-by-image exclude each other (an image's rows hold both tasks)")
        return self

    def validate(self) -> "TrainConfig":  # type: ignore[override]
        """Paths made absolute, so a resumed run started from another folder compares equal."""
        self.data = [_absolute(p) for p in self.data]
        self.val_data = [_absolute(p) for p in self.val_data]
        self.labels = _absolute(self.labels) if self.labels else None
        self.image_root = _absolute(self.image_root) if self.image_root else None
        if self.init_from and Path(self.init_from).expanduser().exists():  # otherwise a hub id, or an error later
            self.init_from = _absolute(self.init_from)
        if self.spec is None and not self.init_from:
            self.spec = "tiny"
        return self

    def contrastive_weight_for(self, spec: ModelSpec) -> float:
        """The contrastive loss's weight for a model of ``spec`` (see the field's help)."""
        if self.contrastive_weight is None:
            return 1.0 if spec.contrastive.enabled else 0.0
        if self.contrastive_weight > 0 and not spec.contrastive.enabled:
            raise PrismerError(
                f"--contrastive-weight {self.contrastive_weight:g} needs a model with the contrastive pass, but spec "
                f"{spec.name!r} has contrastive.enabled: false (add --spec-set contrastive.enabled=true)"
            )
        return float(self.contrastive_weight)

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, round(0.05 * self.max_steps))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A saved run's settings (keys an older version wrote and this one dropped are ignored)."""
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})

    def differences(self, saved: "TrainConfig") -> list[str]:
        """Settings that differ from a saved run's and may not change on resume."""
        mine, theirs = self.to_dict(), saved.to_dict()
        return [
            f"{key}: run has {theirs[key]!r}, now {mine[key]!r}"
            for key in mine
            if key not in RESUMABLE_CHANGES and mine[key] != theirs.get(key)
        ]


def config_error(exc: ValidationError, model: type[BaseModel]) -> PrismerError:
    """The first problem of a settings model as one line: the flag, what is wrong, and for an
    unknown key the closest known one."""
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or ""
    name = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "extra_forbidden":
        return PrismerError(f"{model.__name__} has no setting '{key}'{did_you_mean(name, model.model_fields)}")
    message = error["msg"].removeprefix("Value error, ")
    if not name:
        return PrismerError(message)
    return PrismerError(f"--{name.replace('_', '-')}: {message} (got {error.get('input')!r})")


def check_lr_scales(scales: dict[str, Any]) -> dict[str, float]:
    """Known part names and positive factors, or a clear error naming the bad one."""
    checked = {}
    for part, factor in scales.items():
        if part not in PART_NAMES:
            raise PrismerError(f"--lr-scale {part}: no such part (parts: {', '.join(PART_NAMES)})")
        try:
            value = float(factor)
        except (TypeError, ValueError):
            raise PrismerError(f"--lr-scale {part}={factor!r}: the factor must be a number") from None
        if not value > 0:
            raise PrismerError(f"--lr-scale {part}={factor}: the factor must be positive (freeze a part with the spec's 'frozen')")
        checked[part] = value
    return checked


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())
