"""Process-group set-up for runs launched by torchrun / deepspeed, and the few collectives the
training loop needs. A run started as one plain process needs none of this."""

from __future__ import annotations

import gc
import importlib.util
import os
import socket
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
        global _GROUP_STARTED_HERE
        if _GROUP_STARTED_HERE and dist.is_initialized():
            gc.collect()  # wrappers in reference cycles that hold the group go first, while it is whole
            dist.destroy_process_group()
        _GROUP_STARTED_HERE = False
        while _ENVIRONMENT_SET_HERE:
            os.environ.pop(_ENVIRONMENT_SET_HERE.pop(), None)


#: Whether this module started the process group (so that ``close`` ends only its own), and
#: the torchrun variables it set for a group of one (removed again by ``close``).
_GROUP_STARTED_HERE = False
_ENVIRONMENT_SET_HERE: list[str] = []


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
        _init_group(chosen)
    return Distributed(rank, world_size, local_rank, chosen)


def ensure_process_group(ctx: Distributed) -> None:
    """A group of one for a run started as a plain process, for DeepSpeed, which needs a group
    and torchrun's variables even then: without them it looks for MPI (``mpi4py``) and fails.
    The variables are set as torchrun would set them for one process."""
    if dist.is_initialized():
        return
    if ctx.active:
        raise PrismerError(f"WORLD_SIZE is {ctx.world_size} but no process group was started (use setup_distributed)")
    with socket.socket() as probe:  # a free port on this machine for the group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        if name not in os.environ:
            os.environ[name] = value
            _ENVIRONMENT_SET_HERE.append(name)
    _init_group(ctx.device)


def _init_group(device: torch.device) -> None:
    global _GROUP_STARTED_HERE
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    _GROUP_STARTED_HERE = True


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
