"""The CroCo network and its parts: pure PyTorch, no Lightning, no Hydra."""

from croco.models.checkpoints import (
    CheckpointError,
    export_official_checkpoint,
    load_official_checkpoint,
    read_official_checkpoint,
)
from croco.models.criterion import MaskedMSE
from croco.models.croco import CroCoNet

__all__ = [
    "CheckpointError",
    "CroCoNet",
    "MaskedMSE",
    "export_official_checkpoint",
    "load_official_checkpoint",
    "read_official_checkpoint",
]
