from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"
CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"


def preset_kwargs(name: str) -> dict:
    """The CroCoNet kwargs of a Hydra model preset (conf/model/<name>.yaml)."""
    return OmegaConf.to_container(OmegaConf.load(CONF_MODEL / f"{name}.yaml"), resolve=True)


@pytest.fixture
def tiny_kwargs() -> dict:
    return preset_kwargs("tiny")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
