"""The generation app (generate.py) as the tests drive it: its module, and its config composed with overrides."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def generate_script() -> ModuleType:
    """generate.py loaded as a module (its ``run(cfg)`` returns the exit code)."""
    spec = importlib.util.spec_from_file_location("generate_script", REPO_ROOT / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_generate(*overrides: str) -> DictConfig:
    """conf/generate.yaml with these overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("generate", overrides=list(overrides))
