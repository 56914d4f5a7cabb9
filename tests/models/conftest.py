from __future__ import annotations

from pathlib import Path

import pytest
import torch

from croco.utils.config import model_preset

UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"


@pytest.fixture
def tiny_kwargs() -> dict:
    return model_preset("tiny")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
