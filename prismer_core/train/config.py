"""The settings of a training run, saved in the run folder so ``--resume`` can check them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.manifest import BAD_ROW_POLICIES, parse_tasks
from ..errors import PrismerError
from ..specs import PART_NAMES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "plain", "ddp", "deepspeed")

#: Settings that may change when a run is resumed; every other one must stay the same,
#: because it changes what the model sees (data, order, augmentation) or how it learns.
RESUMABLE_CHANGES = frozenset(
    {"out", "max_steps", "workers", "log_every", "eval_every", "eval_samples", "checkpoint_every",
     "keep_checkpoints", "device", "engine", "deepspeed_config", "on_bad_row", "threads"}
)


@dataclass
class TrainConfig:
    """Everything ``prismer train`` needs; the CLI only fills this in."""

    data: list[str]
    out: str
    spec: str = "tiny"
    experts: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=lambda: ["caption"])
    val_data: list[str] = field(default_factory=list)
    labels: str | None = None  # label store; None: experts run on the fly
    spec_overrides: dict[str, Any] = field(default_factory=dict)
    expert_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    #: Factors of ``lr`` per model part (``{"vision.backbone": 0.1}``); parts not named train at ``lr``.
    lr_scales: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.05
    warmup_steps: int | None = None  # None: 5% of max_steps
    grad_clip: float = 1.0
    precision: str = "auto"
    engine: str = "auto"
    deepspeed_config: str | None = None
    device: str = "auto"
    workers: int = 2
    threads: int = 0  # CPU threads for torch in each training process; 0: torch's default
    seed: int = 0
    on_bad_row: str = "stop"
    crop_scale: float = 0.5  # smallest crop, as a share of the image area
    hflip: float = 0.0
    group_by_task: bool = False  # one task per batch: cheaper steps, but the rarer task trains rarely
    max_text_length: int = 64
    caption_prompt: str = ""
    log_every: int = 1
    eval_every: int = 0  # 0: only at the end
    eval_samples: int = 64  # per task
    checkpoint_every: int = 0  # 0: only at the end (and on Ctrl-C)
    keep_checkpoints: int = 2

    def validate(self) -> "TrainConfig":
        self.tasks = list(parse_tasks(self.tasks))
        checks = [
            (self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.weight_decay >= 0, "--weight-decay must not be negative"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "--warmup-steps must not be negative"),
            (self.grad_clip >= 0, "--grad-clip must not be negative (0 turns clipping off)"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.engine in ENGINES, f"--engine must be one of {', '.join(ENGINES)}"),
            (self.workers >= 0, "--workers must not be negative"),
            (self.threads >= 0, "--threads must not be negative"),
            (self.on_bad_row in BAD_ROW_POLICIES, f"--on-bad-row must be one of {', '.join(BAD_ROW_POLICIES)}"),
            (0 < self.crop_scale <= 1, "--crop-scale must lie in (0, 1]"),
            (0 <= self.hflip <= 1, "--hflip must lie in [0, 1]"),
            (self.max_text_length >= 4, "--max-text-length must be at least 4"),
            (self.keep_checkpoints >= 1, "--keep-checkpoints must be at least 1"),
            (bool(self.data), "no training data given (pass --data MANIFEST)"),
        ]
        for ok, message in checks:
            if not ok:
                raise PrismerError(message)
        self.lr_scales = check_lr_scales(self.lr_scales)
        # absolute paths, so a resumed run started from another folder compares equal
        self.data = [_absolute(p) for p in self.data]
        self.val_data = [_absolute(p) for p in self.val_data]
        self.labels = _absolute(self.labels) if self.labels else None
        return self

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, round(0.05 * self.max_steps))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def differences(self, saved: "TrainConfig") -> list[str]:
        """Settings that differ from a saved run's and may not change on resume."""
        mine, theirs = self.to_dict(), saved.to_dict()
        return [
            f"{key}: run has {theirs[key]!r}, now {mine[key]!r}"
            for key in mine
            if key not in RESUMABLE_CHANGES and mine[key] != theirs.get(key)
        ]


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
