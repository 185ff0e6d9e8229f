"""Training state (optimizer, schedule, RNG) in safetensors + JSON: nothing is pickled.

(DeepSpeed's engine keeps its partitioned optimizer state in its own format, files that
``torch.save`` pickled; they are read back only through :func:`load_pickled_state`, with
``weights_only=True``: tensors, plain data and a short list of DeepSpeed's own data classes,
never arbitrary objects. The RNG file and the step counters are ours in every engine.)

The optimizer's per-parameter tensors (AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``) are
stored as ``state.<param index>.<name>``; its parameter groups and the scheduler's state,
which are plain numbers, go into JSON beside them.
"""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path, write_json_atomic
from ..errors import PrismerError

TENSORS = "optimizer.safetensors"
NUMBERS = "trainer.json"
RNG = "rng.safetensors"


class TrainingStateError(PrismerError):
    """Saved training state that is missing, unreadable, or from another set-up."""


def save_training_state(
    folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, extra: dict[str, Any]
) -> None:
    """Write the optimizer and scheduler state and ``extra`` (step, counters) under ``folder``."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    with atomic_path(folder / TENSORS) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(folder / NUMBERS, {
        "param_groups": state["param_groups"],
        "scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        **extra,
    })


def read_extra(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / NUMBERS).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingStateError(f"training state {folder / NUMBERS} is unreadable: {exc}") from None


def load_training_state(folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns its ``extra`` numbers."""
    numbers = read_extra(folder)
    try:
        tensors = load_file(str(folder / TENSORS))
    except (OSError, SafetensorError) as exc:
        raise TrainingStateError(f"training state {folder / TENSORS} is unreadable: {exc}") from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in numbers["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    expected = sum(len(g["params"]) for g in optimizer.state_dict()["param_groups"])
    saved = sum(len(g["params"]) for g in numbers["param_groups"])
    if expected != saved:
        raise TrainingStateError(
            f"training state in {folder} is for {saved} trainable tensors, this model has {expected}"
        )
    optimizer.load_state_dict({"state": state, "param_groups": numbers["param_groups"]})
    if scheduler is not None and numbers.get("scheduler") is not None:
        scheduler.load_state_dict(numbers["scheduler"])
    if scaler is not None and numbers.get("scaler") is not None:
        scaler.load_state_dict(numbers["scaler"])
    return numbers


def save_rng(folder: Path) -> None:
    """The random generators' state (dropout masks), so a resumed run draws what the
    uninterrupted one would have drawn."""
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    with atomic_path(folder / RNG) as tmp:
        save_file(tensors, str(tmp))


def restore_rng(folder: Path) -> None:
    try:
        tensors = load_file(str(folder / RNG))
    except (OSError, SafetensorError) as exc:
        raise TrainingStateError(f"training state {folder / RNG} is unreadable: {exc}") from None
    torch.set_rng_state(tensors["cpu"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])


#: DeepSpeed's plain-data classes found in its ZeRO optimizer files (an enum, a (start, numel)
#: record, the loss scalers' numbers): allowed by name when a pickled state is read; any other
#: object in such a file is refused.
DEEPSPEED_DATA_CLASSES = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)


def load_pickled_state(path: str | Path, map_location: Any = None) -> Any:
    """A state file that ``torch.save`` pickled (DeepSpeed's), read with ``weights_only=True``.

    A file that holds anything but tensors, plain data and :data:`DEEPSPEED_DATA_CLASSES` is
    refused with a :class:`TrainingStateError`: unpickling it could run any code.
    """
    try:
        with torch.serialization.safe_globals(_deepspeed_data_classes()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line or "Unsupported operand" in line), "")
        raise TrainingStateError(
            f"training state {path} holds pickled objects other than tensors and plain data"
            f"{f' ({found[:160]})' if found else ''}; refusing to unpickle it, since that could run any code: "
            "resume only from states this prismer wrote, or start a new run with --init-from its checkpoint"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise TrainingStateError(f"training state {path} is unreadable: {exc}") from None


def _deepspeed_data_classes() -> list[Any]:
    """The classes of :data:`DEEPSPEED_DATA_CLASSES` that this DeepSpeed has (none without it)."""
    found = []
    for dotted in DEEPSPEED_DATA_CLASSES:
        module, _, name = dotted.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return found
