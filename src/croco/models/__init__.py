"""The CroCo network and its parts: pure PyTorch, no Lightning, no Hydra."""

from croco.models.checkpoints import (
    CheckpointError,
    export_official_checkpoint,
    load_backbone,
    load_official_checkpoint,
    read_official_checkpoint,
)
from croco.models.criterion import MaskedMSE
from croco.models.croco import CroCoNet
from croco.models.downstream import CroCoDownstreamBinocular, CroCoDownstreamMonocularEncoder, LinearProbeHead
from croco.models.dpt import PixelwiseTaskWithDPT

__all__ = [
    "CheckpointError",
    "CroCoDownstreamBinocular",
    "CroCoDownstreamMonocularEncoder",
    "CroCoNet",
    "LinearProbeHead",
    "MaskedMSE",
    "PixelwiseTaskWithDPT",
    "export_official_checkpoint",
    "load_backbone",
    "load_official_checkpoint",
    "read_official_checkpoint",
]
