"""Checkpoints: a directory with the spec, the expert set, the label encoder's identity and weights.

    checkpoint/
      prismer.json          format, expert set (name, version, kind, channels), label encoder,
                            weights file size and SHA-256, the backbones' sources, a causal
                            LM's identity (source, file, SHA-256), caller's extra
      spec.yaml             the model spec, as validated
      weights.safetensors   trained weights (plus any frozen ones that no source can give back)
      <label encoder file>  optional copy, named in prismer.json
      README.md             the model card (Hugging Face format): spec, experts and the packages
                            that provide them, training data, figures (:mod:`prismer_core.model_card`)

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
import importlib.metadata as md
import json
import os
import shutil
import struct
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .atomic import staged_directory, write_bytes_atomic
from .errors import PrismerError
from .experts.contract import ExpertSpec
from .hub import looks_like_hub_id, resolve_hub_checkpoint
from .registry import get_registry
from .model_card import CARD_FILE, CardFacts, Figure, merge_figures, read_figures, render_card
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
    #: SHA-256 of the weights file, as recorded (identifies the checkpoint's weights)
    weights_sha256: str | None = None
    #: per expert, the distribution that provided it when the checkpoint was written, e.g.
    #: ``{"distribution": "prismer-saliency", "version": "1.0.0"}`` (None: not recorded)
    provided_by: dict[str, dict[str, str] | None] = field(default_factory=dict)
    #: A causal-LM decoder's frozen LM: ``{"source", "resolved", "sha256"}`` (None otherwise).
    language_model: dict[str, Any] | None = None


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
        providers = _providers(model.expert_specs)
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "experts": [{**e.record(), "provided_by": providers[name]} for name, e in model.expert_specs.items()],
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
            "language_model": getattr(model, "language_model_identity", None),
            "extra": extra_json,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        (staging / CARD_FILE).write_text(render_card(_card_facts(directory, spec, info)))
        for path in staging.iterdir():
            _fsync(path)
    return directory


def add_figures(directory: str | Path, figures: Sequence[Figure]) -> Path:
    """Write measured ``figures`` into the checkpoint's model card (replacing earlier ones of the
    same task, data, metric and experts), atomically; returns the card's path."""
    directory = Path(directory)
    info = read_checkpoint_info(directory)
    card = directory / CARD_FILE
    merged = merge_figures(read_figures(card), figures)
    write_bytes_atomic(card, render_card(_card_facts(directory, info.spec, _read_info(directory), merged)).encode())
    return card


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
    provided_by = {record["name"]: record.get("provided_by") for record in info["experts"]}
    return CheckpointInfo(directory, spec, experts, encoder.get("identity"), encoder_file, dict(info.get("extra") or {}),
                          (info.get("weights") or {}).get("sha256"), provided_by, info.get("language_model"))


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


def check_same_language_model(checkpoint: CheckpointInfo, found: Mapping[str, Any] | None) -> None:
    """Refuse a frozen LM other than the one the checkpoint was trained on (its weights' SHA-256)."""
    recorded = checkpoint.language_model
    if not recorded or not found or recorded.get("sha256") == found.get("sha256"):
        return
    raise CheckpointError(
        f"checkpoint {checkpoint.directory} was trained on the language model {recorded.get('source')} "
        f"(sha256 {str(recorded.get('sha256'))[:12]}…, at {recorded.get('resolved')}), but {found.get('resolved')} "
        f"has sha256 {str(found.get('sha256'))[:12]}…: another model or version"
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
    """A checkpoint folder as given, the latest complete checkpoint of a run folder, or the
    snapshot of a Hugging Face Hub id (``owner/name[@revision]``) that is not a folder here."""
    if not Path(path).exists() and looks_like_hub_id(str(path)):
        path = resolve_hub_checkpoint(str(path))
    path = Path(path)
    if (path / INFO_FILE).is_file() or not (path / "checkpoints").is_dir():
        return path  # read_checkpoint_info says what is wrong with a non-checkpoint
    latest = latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise CheckpointError(f"run folder {path} has no finished checkpoint yet (no checkpoints/{LATEST})")
    return latest[1]


# -- helpers -----------------------------------------------------------------------------------


def _providers(experts: Mapping[str, ExpertSpec]) -> dict[str, dict[str, str] | None]:
    """Per expert, the installed distribution that provides it (None when the installed expert,
    if any, is not the one the model was built for: a spec described by hand, another version)."""
    if not experts:
        return {}
    registry = get_registry()
    found: dict[str, dict[str, str] | None] = {}
    for name, spec in experts.items():
        entry = registry.experts.get(name)
        same = entry is not None and entry.spec is not None and entry.spec.record() == spec.record()
        found[name] = {"distribution": entry.plugin.distribution, "version": entry.plugin.version} if same else None
    return found


def _card_facts(directory: Path, spec: ModelSpec, info: Mapping[str, Any], figures: Sequence[Figure] = ()) -> CardFacts:
    extra = info.get("extra") or {}
    training = extra.get("training") or {}
    name = f"{Path(training['run']).name}/{directory.name}" if training.get("run") else directory.name
    val = [Figure(task, ", ".join(Path(p).name for p in training.get("val_data") or []) or "validation",
                  "validation loss", loss) for task, loss in (training.get("val_loss") or {}).items()]
    return CardFacts(name, spec, info["experts"], training, (info.get("label_encoder") or {}).get("identity"),
                     info.get("backbones_not_copied") or {}, merge_figures(val, figures), _prismer_version())


def _prismer_version() -> str:
    try:
        return md.version("prismer")
    except md.PackageNotFoundError:  # run from a source tree that is not installed
        return ""


def _read_info(directory: Path) -> dict[str, Any]:
    path = directory / INFO_FILE
    if not directory.exists():
        raise CheckpointError(f"{directory} is not a Prismer checkpoint (it does not exist)")
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
