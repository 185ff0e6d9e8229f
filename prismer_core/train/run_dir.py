"""The run folder: what a run was, how it went, and where its checkpoints are.

    runs/NAME/
      run.json              the training settings, the model spec, the expert set, the engine
      metrics.jsonl         one line per logged step (loss, lr, images/s) and per evaluation
      loss.png              the loss curves, redrawn at each evaluation and checkpoint
      checkpoints/step-000100/        a model checkpoint (loadable for inference) ...
      checkpoints/step-000100/trainer/  ... plus the optimizer/schedule/RNG state to resume
      checkpoints/latest.json         the newest *complete* checkpoint: resume starts there

A checkpoint folder is written under a temporary name and renamed when complete, and
``latest.json`` is replaced atomically after that, so a kill at any moment leaves the
previous checkpoint usable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic, write_json_atomic
from ..checkpoint import LATEST, CheckpointError, latest_checkpoint
from ..errors import PrismerError
from .plot import plot_losses


class RunDirError(PrismerError):
    """A run folder that cannot be started or resumed."""


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config_path = self.root / "run.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.plot_path = self.root / "loss.png"
        self.checkpoints = self.root / "checkpoints"

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def exists(self) -> bool:
        return self.config_path.exists()

    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{self.config_path} is unreadable: {exc}") from None

    def write_config(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.config_path, record)

    # -- checkpoints -----------------------------------------------------------------------
    def latest(self) -> tuple[int, Path] | None:
        """(step, folder) of the newest complete checkpoint, or None."""
        try:
            return latest_checkpoint(self.checkpoints)
        except CheckpointError as exc:
            raise RunDirError(str(exc)) from None

    def mark_latest(self, step: int, folder: Path, keep: int) -> None:
        """Point latest.json at ``folder``; then delete all but the ``keep`` newest checkpoints."""
        write_json_atomic(self.checkpoints / LATEST, {"step": step, "folder": folder.name})
        finished = sorted(p for p in self.checkpoints.glob("step-*") if p.is_dir())
        for old in finished[:-keep]:
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)

    # -- metrics -----------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        return records

    def truncate_metrics(self, step: int) -> None:
        """Forget records after ``step`` (they belong to steps a resumed run will redo)."""
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        write_bytes_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def plot(self, title: str) -> Path:
        plot_losses(self.records(), self.plot_path, title)
        return self.plot_path
