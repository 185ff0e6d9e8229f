"""Training: settings, the loop, engines (plain, DDP, DeepSpeed ZeRO-2), run folders, the demo.

    from prismer_core.train import TrainConfig, train
    result = train(TrainConfig(data=["demo/train.jsonl"], out="runs/demo", experts=["edge"]))
"""

from .config import TrainConfig
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
