"""Loggers and callbacks from config, hyper-parameter logging, and a rank-zero Python logger.

W&B specifics live here: a run that resumes from a checkpoint continues the same W&B run, because its id is
kept in ``<run_dir>/wandb_id.txt`` (the run folder is stable for a run name); a run that starts fresh gets a
new id. Whether W&B is online is decided by the ``croco.wandb_offline`` resolver (offline without an API key).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from croco.utils.files import atomic_output
from croco.utils.instantiate import instantiate

__all__ = [
    "build_callbacks",
    "build_loggers",
    "finish_wandb",
    "get_logger",
    "log_hyperparameters",
    "route_lightning_logs_to_root",
    "stable_wandb_id",
]

WANDB_ID_FILE = "wandb_id.txt"


class _RankZeroAdapter(logging.LoggerAdapter):
    """Logs only on global rank 0, so an 8-GPU run prints each line once."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if getattr(rank_zero_only, "rank", 0) == 0:
            super().log(level, msg, *args, **kwargs)


def get_logger(name: str) -> logging.LoggerAdapter:
    return _RankZeroAdapter(logging.getLogger(name), {})


def _children(cfg: DictConfig | Mapping | None) -> list[tuple[str, Any]]:
    if not cfg:
        return []
    return [(k, v) for k, v in cfg.items() if isinstance(v, DictConfig | Mapping) and "_target_" in v]


def build_callbacks(cfg: DictConfig | None) -> list[Any]:
    """One callback per child of ``cfg`` that has a ``_target_`` (``conf/callbacks/*.yaml``)."""
    return [instantiate(node) for _, node in _children(cfg)]


def stable_wandb_id(run_dir: str | os.PathLike, resuming: bool) -> str:
    """The W&B run id of a run folder: reused when resuming, renewed (and stored atomically) otherwise."""
    path = Path(run_dir) / WANDB_ID_FILE
    if resuming and path.is_file():
        stored = path.read_text().strip()
        if stored:
            return stored
    run_id = uuid.uuid4().hex[:12]
    with atomic_output(path) as tmp:
        tmp.write_text(run_id + "\n")
    return run_id


def build_loggers(cfg: DictConfig | None, run_dir: str | os.PathLike, resuming: bool = False) -> list[Any]:
    """One logger per child of ``cfg`` (``conf/logger/*.yaml``); W&B gets a stable id (see module doc)."""
    loggers = []
    for _, node in _children(cfg):
        target = str(node.get("_target_", ""))
        if target.endswith("WandbLogger") and node.get("id") is None:
            node = node.copy()
            with open_dict(node):
                node.id = stable_wandb_id(run_dir, resuming) if rank_zero_only.rank == 0 else None
        loggers.append(instantiate(node))
    return loggers


def log_hyperparameters(loggers: list[Any], cfg: DictConfig, task: Any) -> None:
    """Send the whole resolved config (so swept values are comparable on a dashboard) plus parameter counts."""
    if not loggers or getattr(rank_zero_only, "rank", 0) != 0:
        return
    params = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(params, dict)
    params.pop("hydra", None)
    net = getattr(task, "net", task)
    params["model/params_total"] = sum(p.numel() for p in net.parameters())
    params["model/params_trainable"] = sum(p.numel() for p in net.parameters() if p.requires_grad)
    for logger in loggers:
        logger.log_hyperparams(params)


def finish_wandb() -> None:
    """Close an active W&B run, so that the next job of a multirun starts its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def route_lightning_logs_to_root() -> None:
    """Drop the console handler ``import lightning`` puts on the "lightning" logger when the root logger already
    has handlers (Hydra's console + log file): otherwise every Lightning message is printed twice."""
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
