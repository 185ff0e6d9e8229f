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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import PrismerError
from .experts.contract import ExpertKind, ExpertSpec
from .specs import ModelSpec, spec_from_dict

FORMAT = "prismer-checkpoint"
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
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
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
            "experts": [_expert_record(e) for e in model.expert_specs.values()],
            "label_encoder": {"identity": label_encoder, "file": copied},
            "weights": {
                "file": WEIGHTS_FILE,
                "bytes": (staging / WEIGHTS_FILE).stat().st_size,
                "sha256": _sha256(staging / WEIGHTS_FILE),
                "tensors": len(tensors),
            },
            "backbones_not_copied": {
                "vision": spec.vision.pretrained and f"{spec.vision.tower_name} / {spec.vision.pretrained}",
                "decoder": spec.decoder.weights,
            },
            "extra": extra_json,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        for path in staging.iterdir():
            _fsync(path)
        _replace_directory(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
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
        experts = {record["name"]: _expert_from_record(record) for record in info["experts"]}
        encoder = info.get("label_encoder") or {}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {INFO_FILE} has a bad expert record ({exc})") from None
    encoder_file = directory / encoder["file"] if encoder.get("file") else None
    return CheckpointInfo(directory, spec, experts, encoder.get("identity"), encoder_file, dict(info.get("extra") or {}))


def load_checkpoint(
    directory: str | Path,
    experts: Mapping[str, ExpertSpec] | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Rebuild the model of a checkpoint (backbones from their sources) and load its weights.

    ``experts``, when given, must be the recorded expert set (same names, versions and
    shapes); a different set is an error rather than a silently wrong model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import build_model

    checkpoint = read_checkpoint_info(directory)
    if experts is not None:
        _check_same_experts(checkpoint, experts)
    weights = _verified_weights(checkpoint.directory)
    model = build_model(checkpoint.spec, experts if experts is not None else checkpoint.experts, device=device)
    try:
        tensors = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint.directory}: {WEIGHTS_FILE} is damaged: {exc}") from None
    expected = set(saved_weight_names(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint.directory} does not fit its spec: "
            f"missing {_few(missing)}; unexpected {_few(unexpected)}"
        )
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {checkpoint.directory}: weights do not fit the model: {exc}") from None
    model.checkpoint_info = checkpoint
    return model


# -- helpers -----------------------------------------------------------------------------------


def _expert_record(expert: ExpertSpec) -> dict[str, Any]:
    return {
        "name": expert.name,
        "version": expert.version,
        "kind": ExpertKind(expert.kind).value,
        "channels": expert.channels,
        "has_instances": expert.has_instances,
    }


def _expert_from_record(record: Mapping[str, Any]) -> ExpertSpec:
    """The parts of an expert's spec the model depends on (enough to rebuild its stem)."""
    kind = ExpertKind(record["kind"])
    return ExpertSpec(
        name=record["name"],
        version=record["version"],
        kind=kind,
        channels=int(record["channels"]),
        has_instances=bool(record["has_instances"]),
        open_vocabulary=kind is ExpertKind.SEMANTIC,
    )


def _check_same_experts(checkpoint: CheckpointInfo, experts: Mapping[str, ExpertSpec]) -> None:
    recorded = {name: _expert_record(e) for name, e in checkpoint.experts.items()}
    given = {name: _expert_record(e) for name, e in experts.items()}
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


def _replace_directory(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _few(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
