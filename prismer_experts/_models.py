"""Finding pre-trained weights in explicit places, and running torch models in batches.

Weights come only from places a user named: a setting (``--set depth.model=…`` or
``PRISMER_DEPTH_MODEL``), a default file or folder under ``$PRISMER_WEIGHTS_DIR``, or a
Hugging Face hub id that is already in the local cache. Nothing here downloads: models are
loaded with ``local_files_only=True``, and a missing one makes the expert 'not ready' with
the exact thing to do.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prismer_core.experts.contract import Readiness
from prismer_core.experts.settings import env_var
from prismer_core.paths import weights_dir

#: What the built-in experts run on: the CPU, and GPUs through torch (or onnxruntime-gpu).
CPU_AND_GPU = ("cpu", "cuda")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cpu_threads() -> int:
    """The CPU threads an expert's own runtime (onnxruntime, OpenCV) should use: the process's
    torch thread count, which `prismer label --workers N` sets to each process's share of the
    cores (so N processes do not each start a thread per core)."""
    import torch

    return torch.get_num_threads()


def under_weights_dir(name: str) -> Path | None:
    """``$PRISMER_WEIGHTS_DIR/name``, or None when the variable is not set."""
    root = weights_dir()
    return root / name if root else None


def _how_to_set(expert: str, key: str) -> str:
    return f"{env_var(expert, key)}=… or --set {expert}.{key}=…"


def find_pretrained_folder(
    value: str | None,
    *,
    expert: str,
    key: str,
    what: str,
    default_name: str,
    example: str,
    marker: str = "config.json",
) -> tuple[str | None, Readiness]:
    """Resolve a Hugging Face style model (transformers, diffusers) to load offline.

    ``value`` is a local folder or a hub id; unset, ``$PRISMER_WEIGHTS_DIR/<default_name>``
    is tried. Returns the location to pass to ``from_pretrained(..., local_files_only=True)``
    and 'ready', or None and why not with what to do. ``marker`` is a file the folder must hold.
    """
    fix_all = (
        f"set {_how_to_set(expert, key)} to a local {what} folder or a downloaded hub id such as "
        f"{example}, or put the model in $PRISMER_WEIGHTS_DIR/{default_name}"
    )
    if not value:
        default = under_weights_dir(default_name)
        if default is not None and (default / marker).is_file():
            return str(default), Readiness.ok()
        where = f" (nothing at {default})" if default is not None else ""
        return None, Readiness.missing(f"no {what} configured{where}", fix_all)
    path = Path(value).expanduser()
    if path.exists():
        if not (path / marker).is_file():
            return None, Readiness.missing(f"{path} has no {marker}: it is not a saved {what}", fix_all)
        return str(path), Readiness.ok()
    if not _HUB_ID.match(value):
        return None, Readiness.missing(f"{what} folder {path} does not exist", fix_all)
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(value, marker), str):
        return value, Readiness.ok()
    return None, Readiness.missing(
        f"{value} is not in the Hugging Face cache of this machine (nothing is downloaded)",
        f"fetch it where there is internet with `hf download {value}` and copy the cache here, "
        f"or point {env_var(expert, key)} at a local folder",
    )


def find_weights_file(
    value: str | None,
    *,
    expert: str,
    key: str,
    what: str,
    default_names: Sequence[str],
    source: str,
) -> tuple[Path | None, Readiness]:
    """Resolve a single weights file: ``value``, else the first of ``default_names`` found in
    ``$PRISMER_WEIGHTS_DIR``. ``source`` says where a user gets the file."""
    fix = (
        f"get {source}, then set {_how_to_set(expert, key)} to the file, "
        f"or put it in $PRISMER_WEIGHTS_DIR as {' or '.join(default_names[:3])}"
    )
    if value:
        path = Path(value).expanduser()
        if path.is_file():
            return path, Readiness.ok()
        return None, Readiness.missing(f"{what} file {path} does not exist", fix)
    for name in default_names:
        path = under_weights_dir(name)
        if path is not None and path.is_file():
            return path, Readiness.ok()
    where = f" in {weights_dir()}" if weights_dir() else " ($PRISMER_WEIGHTS_DIR is not set)"
    return None, Readiness.missing(f"no {what} found{where}", fix)


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors from a .safetensors file, or a plain state dict from a .pt/.pth file.

    Pickled files are read with ``weights_only=True``, which refuses anything but tensors and
    plain containers, so a weights file cannot run code.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def torch_dtype(device: str, half: bool) -> Any:
    """float16 on a GPU when the expert allows it (setting ``half``), else float32."""
    import torch

    return torch.float16 if half and device.startswith("cuda") else torch.float32


def groups_by_shape(arrays: Sequence[Any]) -> list[list[int]]:
    """Indices of ``arrays`` grouped by shape (first-seen order), so each group stacks into a batch."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, array in enumerate(arrays):
        groups.setdefault(tuple(array.shape), []).append(index)
    return list(groups.values())


def to_unit_range(values: np.ndarray) -> np.ndarray:
    """Stretch ``values`` linearly onto [-1, 1] (a constant map becomes 0), as float32."""
    values = values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if not np.isfinite([low, high]).all() or high - low < 1e-12:
        return np.zeros_like(values)
    return np.clip((values - low) * (2.0 / (high - low)) - 1.0, -1.0, 1.0)


@contextlib.contextmanager
def quiet_hub_loading() -> Iterator[None]:
    """Hide transformers' and diffusers' loading bars and notices while a model loads:
    `prismer label` shows one progress bar, its own."""
    restore = []
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(name)  # only the libraries the caller already imported
        if module is None:
            continue
        logging = module.utils.logging
        restore.append((logging, logging.get_verbosity(), logging.is_progress_bar_enabled()))
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    try:
        yield
    finally:
        for logging, verbosity, bar in restore:
            logging.set_verbosity(verbosity)
            if bar:
                logging.enable_progress_bar()
