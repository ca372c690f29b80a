"""The one trainer: loop, optimizers and schedules, checkpoints with exact resume, DDP."""

from .checkpoint import DiskFull, average_checkpoints, latest_checkpoint, list_checkpoints
from .losses import token_cross_entropy
from .optim import build_optimizer, lr_multiplier
from .run import RunDirectory
from .trainer import (
    NonFiniteLoss,
    TrainConfig,
    Trainer,
    init_distributed,
    is_main_process,
    preset_train_config,
)

__all__ = ["TrainConfig", "Trainer", "preset_train_config", "build_optimizer", "lr_multiplier",
           "token_cross_entropy", "average_checkpoints", "latest_checkpoint", "list_checkpoints",
           "init_distributed", "is_main_process", "NonFiniteLoss", "DiskFull", "RunDirectory"]
