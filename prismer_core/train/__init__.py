"""Training: settings, the loop, engines (plain, DDP, DeepSpeed ZeRO-2), run folders.

    from prismer_core.train import TrainConfig, train
    result = train(TrainConfig(data=["demo/train.jsonl"], out="runs/demo", experts=["edge"]))

``TrainConfig`` is light to import (the CLI builds its flags from it); the loop, which needs
torch, is imported on first use of ``train`` or ``TrainResult``.
"""

from typing import Any

from .config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'prismer_core.train' has no attribute {name!r}")
