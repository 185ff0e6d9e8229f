"""`prismer train --init-from RUN`: start from a trained checkpoint, adding experts it lacks.

Everything the checkpoint holds loads exactly (the same names and shapes, or a clear error);
each expert new to the run gets a fresh stem, and a checkpoint without experts (PrismerZ)
gets a fresh resampler too. The spec is the checkpoint's unless the run gives another, which
must then describe the same model (only the frozen parts may differ: which parts train on is
the new run's choice). Every expert of the checkpoint must stay, at the version it was
trained with: its stem's weights mean nothing for another version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..checkpoint import CheckpointError, CheckpointInfo, load_weights, read_checkpoint_info, resolve_checkpoint
from ..experts.contract import ExpertSpec
from ..model import Prismer, build_model, part_of
from ..specs import ModelSpec, load_spec

#: Spec fields a run may change from its parent's: they say what trains, not what the weights are
#: (the output vocabulary picks which rows of the tied embedding are written, all of them kept).
MAY_DIFFER = frozenset({"frozen", "description", "decoder.output_vocabulary"})


@dataclass(frozen=True)
class Parent:
    """The checkpoint a run starts from, checked against the run's spec and experts."""

    info: CheckpointInfo
    spec: ModelSpec  # the run's spec
    new_experts: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        """What the run and its checkpoints keep of their parent (run.json, prismer.json, the card)."""
        training = self.info.extra.get("training") or {}
        return {
            "checkpoint": str(self.info.directory),
            "step": training.get("step"),
            "experts": list(self.info.experts),
            "new_experts": list(self.new_experts),
            "weights_sha256": self.info.weights_sha256,
        }


def read_parent(source: str, spec: str | None, overrides: Mapping[str, Any], experts: Mapping[str, ExpertSpec]) -> Parent:
    """Resolve ``source`` (a checkpoint or run folder, or a hub id) and check that the run
    (``spec`` or the parent's, with ``overrides``; ``experts``) can start from it."""
    try:
        info = read_checkpoint_info(resolve_checkpoint(source))
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from {source}: {exc}") from None
    run_spec = load_spec(spec, overrides or None) if spec is not None else info.spec.with_overrides(overrides) if overrides else info.spec
    differences = _spec_differences(info.spec.to_dict(), run_spec.to_dict())
    if differences:
        raise CheckpointError(
            f"--init-from {source}: the checkpoint is of another spec than this run ({'; '.join(differences[:4])}); "
            "drop --spec to use the checkpoint's"
        )
    left_out = [name for name in info.experts if name not in experts]
    if left_out:
        raise CheckpointError(
            f"--init-from {source}: the checkpoint was trained with {', '.join(info.experts)}; --experts must keep "
            f"every one of them (left out: {', '.join(left_out)}); a checkpoint runs without one at inference "
            "with --missing-experts drop"
        )
    for name, trained in info.experts.items():
        if trained.record() != experts[name].record():
            here, there = experts[name].record(), trained.record()
            changed = ", ".join(f"{key} {there[key]} there, {here[key]} here" for key in here if here[key] != there[key])
            raise CheckpointError(f"--init-from {source}: expert '{name}' differs from the one the checkpoint was trained with ({changed})")
    return Parent(info, run_spec, tuple(name for name in experts if name not in info.experts))


def model_from_parent(parent: Parent, experts: Mapping[str, ExpertSpec], device: str | torch.device = "cpu") -> Prismer:
    """The run's model: fresh parts for the new experts, every other weight from the parent."""
    model = build_model(parent.spec, experts, device=device)
    fresh = tuple(f"encoder.stems.{name}." for name in parent.new_experts)
    if not parent.info.experts:
        fresh += ("encoder.resampler.",)
    frozen_there = set(parent.info.spec.frozen)
    expected = {
        name
        for name, tensor in model.state_dict(keep_vars=True).items()
        if not name.startswith(fresh)
        and (name not in model.pretrained_names or (isinstance(tensor, torch.nn.Parameter) and part_of(name) not in frozen_there))
    }
    load_weights(model, parent.info, expected, device)
    return model


def _spec_differences(parent: dict[str, Any], run: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(parent) | set(run)):
        if f"{prefix}{key}" in MAY_DIFFER:
            continue
        there, here = parent.get(key), run.get(key)
        if isinstance(there, dict) and isinstance(here, dict):
            found += _spec_differences(there, here, f"{prefix}{key}.")
        elif there != here:
            found.append(f"{prefix}{key}: {there!r} there, {here!r} here")
    return found
