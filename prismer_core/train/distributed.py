"""Process-group set-up for runs launched by torchrun / deepspeed, and the few collectives the
training loop needs. A run started as one plain process needs none of this."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import PrismerError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def max(self, *values: float) -> list[float]:
        """Element-wise maximum over all processes (flags: 'anyone interrupted?')."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def sum(self, *values: float) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def _reduce(self, values: tuple[float, ...], op) -> list[float]:
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` is this process's GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise PrismerError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:1 …)") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise PrismerError("--device cuda was asked for, but torch sees no GPU here")
        if chosen.index is None:
            chosen = torch.device(f"cuda:{local_rank}")
    return chosen


def setup_distributed(device: str = "auto") -> Distributed:
    """Join the process group that torchrun/deepspeed describe in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank, chosen)


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def choose_engine(requested: str, ctx: Distributed) -> str:
    """``auto``: DeepSpeed on GPUs when it is installed; DDP for several CPU processes; else plain."""
    if requested == "auto":
        if ctx.device.type == "cuda" and deepspeed_installed():
            return "deepspeed"
        return "ddp" if ctx.active else "plain"
    if requested == "deepspeed" and not deepspeed_installed():
        raise PrismerError("--engine deepspeed needs DeepSpeed: pip install 'prismer[train]'")
    if requested == "plain" and ctx.active:
        raise PrismerError(f"--engine plain runs one process, but {ctx.world_size} were launched: use --engine ddp")
    if requested == "ddp" and not ctx.active:
        return "plain"
    return requested
