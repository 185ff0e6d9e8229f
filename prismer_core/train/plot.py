"""The PNG of a run's loss curves, drawn from metrics.jsonl with matplotlib (no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start)."""
    data = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(data) == 0:
        return data
    sums = np.cumsum(np.insert(data, 0, 0.0))
    counts = np.minimum(np.arange(1, len(data) + 1), window)
    return (sums[1:] - sums[np.maximum(0, np.arange(1, len(data) + 1) - window)]) / counts


def plot_losses(records: Sequence[dict[str, Any]], target: Path, title: str) -> None:
    """Training loss (raw and smoothed), the contrastive loss (smoothed, when the run has the
    contrastive pass) and validation loss per task against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        steps, losses = zip(*train)
        axis.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        axis.plot(steps, smooth(losses, max(1, len(losses) // 20)), color="tab:blue", label="train (smoothed)")
    contrastive = [(r["step"], r["contrastive_loss"]) for r in records if "contrastive_loss" in r]
    if contrastive:
        steps, losses = zip(*contrastive)
        axis.plot(steps, smooth(losses, max(1, len(losses) // 20)), color="tab:gray", label="contrastive (smoothed)")
    val_keys = sorted({k for r in records for k in r if k.startswith("val_loss")})
    for colour, key in zip(("tab:orange", "tab:green", "tab:red", "tab:purple"), val_keys):
        points = [(r["step"], r[key]) for r in records if key in r]
        steps, losses = zip(*points)
        axis.plot(steps, losses, "o-", color=colour, markersize=4, label=key.replace("val_loss", "validation").replace("_", " "))
    axis.set_xlabel("step")
    axis.set_ylabel("loss (cross-entropy per token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if train or contrastive or val_keys:
        axis.legend()
    figure.tight_layout()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
