"""Checkpoints: a directory with the spec, the expert set, the label encoder's identity and weights.

    checkpoint/
      prismer.json          format, expert set (name, version, kind, channels), label encoder,
                            weights file size and SHA-256, the backbones' sources, caller's extra
      spec.yaml             the model spec, as validated
      weights.safetensors   trained weights (plus any frozen ones that no source can give back)
      <label encoder file>  optional copy, named in prismer.json

Frozen backbone weights that came from a named source (open_clip tag or file, transformers id
or directory) are not copied: loading builds the model from the spec, which fetches them
again. The directory is written under a temporary name and renamed into place, so a reader
never sees half a checkpoint. Loading checks the expert set, the file size, the safetensors
header and the checksum before reading a tensor; nothing is unpickled.

This module reads and writes the files; the model builds itself from them
(:meth:`prismer_core.model.Prismer.from_pretrained`), so it never imports the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .atomic import staged_directory
from .errors import PrismerError
from .experts.contract import ExpertSpec
from .specs import ModelSpec, spec_from_dict

FORMAT = "prismer-checkpoint"
#: In a run folder's checkpoints/: names the newest complete checkpoint.
LATEST = "latest.json"
FORMAT_VERSION = 1
INFO_FILE = "prismer.json"
SPEC_FILE = "spec.yaml"
WEIGHTS_FILE = "weights.safetensors"


class CheckpointError(PrismerError):
    """A checkpoint is missing, damaged, or does not fit the run."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint records besides its weights (read with :func:`read_checkpoint_info`)."""

    directory: Path
    spec: ModelSpec
    experts: dict[str, ExpertSpec]
    label_encoder: str | None = None
    label_encoder_file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def saved_weight_names(model: torch.nn.Module) -> list[str]:
    """Weights a checkpoint of ``model`` holds: trainable ones, and frozen ones no source gives back."""
    pretrained = getattr(model, "pretrained_names", frozenset())
    return [
        name
        for name, tensor in model.state_dict(keep_vars=True).items()
        if (isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad) or name not in pretrained
    ]


def save_checkpoint(
    model: torch.nn.Module,
    directory: str | Path,
    extra: Mapping[str, Any] | None = None,
    *,
    label_encoder: str | None = None,
    label_encoder_file: str | Path | None = None,
) -> Path:
    """Write ``model`` to ``directory`` atomically (an existing checkpoint there is replaced).

    ``label_encoder`` identifies the label-embedding projection the semantic maps were made
    with (the caller's string); ``label_encoder_file`` is copied in beside it. ``extra`` is any
    JSON-serialisable data of the caller (training step, metrics...).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not (directory / INFO_FILE).is_file() and (not directory.is_dir() or any(directory.iterdir())):
        raise CheckpointError(f"{directory} exists and is not a Prismer checkpoint; refusing to replace it")
    try:
        extra_json = json.loads(json.dumps(dict(extra or {})))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint extra data must be JSON-serialisable: {exc}") from None
    if label_encoder_file is not None and not Path(label_encoder_file).is_file():
        raise CheckpointError(f"label encoder file {label_encoder_file} does not exist")
    with staged_directory(directory) as staging:
        state = model.state_dict()
        tensors = {name: state[name].detach().to("cpu").contiguous() for name in saved_weight_names(model)}
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
        copied = None
        if label_encoder_file is not None:
            copied = Path(label_encoder_file).name
            shutil.copyfile(label_encoder_file, staging / copied)
        spec: ModelSpec = model.spec
        (staging / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "experts": [e.record() for e in model.expert_specs.values()],
            "label_encoder": {"identity": label_encoder, "file": copied},
            "weights": {
                "file": WEIGHTS_FILE,
                "bytes": (staging / WEIGHTS_FILE).stat().st_size,
                "sha256": _sha256(staging / WEIGHTS_FILE),
                "tensors": len(tensors),
            },
            "backbones_not_copied": {
                "vision": spec.vision.pretrained and f"{spec.vision.open_clip_model} / {spec.vision.pretrained}",
                "decoder": spec.decoder.weights,
            },
            "extra": extra_json,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        for path in staging.iterdir():
            _fsync(path)
    return directory


def read_checkpoint_info(directory: str | Path) -> CheckpointInfo:
    """The spec, expert set, label encoder and extra data of a checkpoint, without its weights."""
    directory = Path(directory)
    info = _read_info(directory)
    spec_path = directory / SPEC_FILE
    try:
        spec_data = yaml.safe_load(spec_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"checkpoint {directory}: cannot read {SPEC_FILE}: {exc}") from None
    spec = spec_from_dict(spec_data, str(spec_path))
    try:
        experts = {record["name"]: ExpertSpec.from_record(record) for record in info["experts"]}
        encoder = info.get("label_encoder") or {}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {INFO_FILE} has a bad expert record ({exc})") from None
    encoder_file = directory / encoder["file"] if encoder.get("file") else None
    return CheckpointInfo(directory, spec, experts, encoder.get("identity"), encoder_file, dict(info.get("extra") or {}))


def load_weights(model: torch.nn.Module, info: CheckpointInfo, expected: Set[str], device: str | torch.device = "cpu") -> None:
    """Load the checkpoint's verified weights into ``model``; ``expected`` are the names it
    must hold (the model's trainable and unsourced weights), exactly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = _verified_weights(info.directory)
    try:
        tensors = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {info.directory}: {WEIGHTS_FILE} is damaged: {exc}") from None
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {info.directory} does not fit its spec: missing {_few(missing)}; unexpected {_few(unexpected)}"
        )
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {info.directory}: weights do not fit the model: {exc}") from None


def weights_sha256(directory: str | Path) -> str:
    """The SHA-256 of a checkpoint's weights file, as recorded when it was written (what
    caches of a checkpoint's results are keyed by: two checkpoints of equal weights share it)."""
    return str(_read_info(Path(directory))["weights"]["sha256"])


def check_same_experts(checkpoint: CheckpointInfo, experts: Mapping[str, ExpertSpec]) -> None:
    """Refuse an expert set other than the recorded one (names, versions, kinds, shapes)."""
    recorded = {name: e.record() for name, e in checkpoint.experts.items()}
    given = {name: e.record() for name, e in experts.items()}
    if recorded == given:
        return
    problems = []
    if set(recorded) - set(given):
        problems.append(f"missing here: {', '.join(sorted(set(recorded) - set(given)))}")
    if set(given) - set(recorded):
        problems.append(f"not in the checkpoint: {', '.join(sorted(set(given) - set(recorded)))}")
    for name in sorted(set(recorded) & set(given)):
        for key in ("version", "kind", "channels", "has_instances"):
            if recorded[name][key] != given[name][key]:
                problems.append(f"{name} {key} is {given[name][key]} here but {recorded[name][key]} in the checkpoint")
    trained = ", ".join(f"{n} {r['version']}" for n, r in sorted(recorded.items())) or "no experts"
    raise CheckpointError(
        f"checkpoint {checkpoint.directory} was trained with {trained}; this run's experts differ ({'; '.join(problems)})"
    )


def latest_checkpoint(checkpoints: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint named by ``checkpoints/latest.json``."""
    path = checkpoints / LATEST
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        step, folder = int(record["step"]), checkpoints / record["folder"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from None
    if not folder.is_dir():
        raise CheckpointError(f"{path} names {folder}, which does not exist")
    return step, folder


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or the latest complete checkpoint of a run folder."""
    path = Path(path)
    if (path / INFO_FILE).is_file() or not (path / "checkpoints").is_dir():
        return path  # read_checkpoint_info says what is wrong with a non-checkpoint
    latest = latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise CheckpointError(f"run folder {path} has no finished checkpoint yet (no checkpoints/{LATEST})")
    return latest[1]


# -- helpers -----------------------------------------------------------------------------------


def _read_info(directory: Path) -> dict[str, Any]:
    path = directory / INFO_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a Prismer checkpoint (no {INFO_FILE})")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {INFO_FILE} is unreadable: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {directory}: {INFO_FILE} is not a {FORMAT} file")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {directory} has format version {info.get('format_version')}; this prismer reads {FORMAT_VERSION}"
        )
    return info


def _verified_weights(directory: Path) -> Path:
    """The weights file, after checking its size, safetensors header and checksum."""
    recorded = _read_info(directory)["weights"]
    path = directory / recorded["file"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory}: {recorded['file']} is missing")
    size = path.stat().st_size
    if size != recorded["bytes"]:
        raise CheckpointError(
            f"checkpoint {directory}: {recorded['file']} is truncated or damaged ({size} bytes, expected {recorded['bytes']})"
        )
    _check_safetensors_layout(path, size)
    if _sha256(path) != recorded["sha256"]:
        raise CheckpointError(f"checkpoint {directory}: {recorded['file']} is corrupt (checksum mismatch)")
    return path


def _check_safetensors_layout(path: Path, size: int) -> None:
    """The header must parse and its tensors must end exactly at the end of the file."""
    try:
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > size - 8:
                raise ValueError("header runs past the end of the file")
            header = json.loads(handle.read(header_size))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None
    if 8 + header_size + end != size:
        raise CheckpointError(f"{path} is truncated or damaged: its header describes {8 + header_size + end} bytes, the file has {size}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _few(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
