"""Run a composed training config end to end: validate, build, resume or start, fit.

``train.py`` is a thin Hydra entry point around :func:`train`; tests call :func:`train` with configs composed
by ``hydra.compose``.

Resuming: a run's checkpoints live in ``paths.ckpt_dir`` (``<ckpt_root>/<run_name>/checkpoints``), a folder that
does not depend on the launch time. With ``ckpt_path: last`` (the default) a launch resumes from the newest of
``last.ckpt`` and the SLURM pre-emption checkpoint ``hpc_ckpt_*.ckpt``, or starts fresh (and says so) when
there is none. Global step, optimizer and scheduler state, loops and callbacks all continue, and so does the pair
order of an interrupted epoch (``PairDataModule.state_dict`` records how far it got): a resumed run, at an epoch
boundary or inside an epoch (a SLURM pre-emption, a ``last.ckpt`` written every N steps), ends with the weights of
an uninterrupted one (tests/test_train.py).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

import croco.utils.resolvers  # noqa: F401 - registers the croco.* resolvers
from croco.tasks.checks import validate_train_config
from croco.utils.config import ConfigError
from croco.utils.files import remove_stale_temporaries
from croco.utils.instantiate import instantiate
from croco.utils.locks import FolderLock
from croco.utils.logging import (
    build_callbacks,
    build_loggers,
    finish_wandb,
    get_logger,
    log_hyperparameters,
    route_lightning_logs_to_root,
)

__all__ = ["build_trainer", "check_resume_checkpoint", "resolve_resume_checkpoint", "train"]

log = get_logger(__name__)


def _checkpoints(folder: Path, pattern: str) -> list[Path]:
    return [p for p in folder.glob(pattern) if p.is_file()] if folder.is_dir() else []


def resolve_resume_checkpoint(ckpt_path: str | None, ckpt_dir: str | Path, hpc_dir: str | Path) -> str | None:
    """``None`` -> start fresh; ``"last"`` -> newest of ``ckpt_dir/last*.ckpt`` and ``hpc_dir/hpc_ckpt_*.ckpt``
    (or None with a log line when there is none); any other value must be an existing file."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) != "last":
        if not Path(ckpt_path).is_file():
            raise ConfigError(
                f"ckpt_path={ckpt_path}: no such checkpoint file; allowed: null, last, or a file path"
            )
        return str(ckpt_path)
    candidates = _checkpoints(Path(ckpt_dir), "last*.ckpt") + _checkpoints(Path(hpc_dir), "hpc_ckpt_*.ckpt")
    if not candidates:
        log.info("no checkpoint in %s: starting a fresh run", ckpt_dir)
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    log.info("resuming from %s", newest)
    return str(newest)


def check_resume_checkpoint(path: str, cfg: DictConfig) -> None:
    """A checkpoint to resume from is a complete file of the same network: a truncated file (a full disk, a
    copy cut short) or another architecture is a one-line ``ConfigError`` that says how to start fresh. Cheap:
    the zip directory and the hyper-parameters only (tensors are memory-mapped, not read)."""
    fresh = "start fresh with ckpt_path=null (or delete it, or choose another run_name)"
    try:
        with zipfile.ZipFile(path):
            pass
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as error:
        raise ConfigError(f"{path}: truncated or not a checkpoint ({type(error).__name__}); {fresh}") from None
    except Exception as error:  # noqa: BLE001 - a refused pickle or any other unreadable content
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: cannot be read as a checkpoint ({first[:160]}); {fresh}") from None
    stored = (ckpt.get("hyper_parameters") or {}).get("model") if isinstance(ckpt, dict) else None
    wanted = OmegaConf.to_container(cfg.task.model, resolve=True) if "model" in cfg.task else None
    if isinstance(stored, dict) and isinstance(wanted, dict):
        differ = [f"{k}={stored.get(k)!r} (config: {wanted.get(k)!r})" for k in sorted(set(stored) | set(wanted))
                  if k != "img_size" and stored.get(k) != wanted.get(k)]  # fmt: skip
        if differ:
            raise ConfigError(f"{path}: written by another network: {', '.join(differ)}; resume with the same "
                              f"model or {fresh}")  # fmt: skip


def _is_main_launch_process() -> bool:
    """The process that owns the run folder: not a DDP rank re-launched by Lightning or started by SLURM."""
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any], datamodule: Any = None) -> pl.Trainer:
    """The configured trainer; a data module whose training shards grow while it trains (``split_by_shards``:
    generation in the background) gets its train loader reloaded at every epoch boundary."""
    extra: dict[str, Any] = {}
    if getattr(datamodule, "split_by_shards", False) and not cfg.trainer.get("reload_dataloaders_every_n_epochs"):
        extra["reload_dataloaders_every_n_epochs"] = 1
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers if loggers else False, **extra)


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, int | float):
            out[key] = float(value)
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the task of ``cfg`` and return the final logged metrics (floats)."""
    route_lightning_logs_to_root()
    validate_train_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as the official code enables

    for folder in (cfg.paths.ckpt_dir, cfg.paths.run_dir):  # what killed writers left behind
        for path in remove_stale_temporaries(folder):
            log.info("removed %s (temporary file of a process that no longer runs)", path)
    lock = FolderLock(cfg.paths.run_dir, f"training run {cfg.run_name}") if _is_main_launch_process() else None
    if lock is not None:
        lock.acquire()  # one launch per run folder: two would resume from and write the same checkpoints
    try:
        if lock is not None:
            link_launch(Path(cfg.paths.run_dir), Path(cfg.paths.output_dir))
        return _fit(cfg)
    finally:
        if lock is not None:
            lock.release()


def link_launch(run_dir: Path, output_dir: Path) -> Path | None:
    """A launch folder outside the run folder (a multirun job's, ``logs/multiruns/<time>/<n>``) gets a link in
    ``<run_dir>/launches/<time>-<n>``, so that a run's metrics and panels are found from the run itself, as for a
    single run (``croco.utils.runs.find_metrics``). Returns the link, or None when none is needed."""
    run_dir, output_dir = run_dir.resolve(), output_dir.resolve()
    if output_dir.is_relative_to(run_dir):
        return None
    link = run_dir / "launches" / f"{output_dir.parent.name}-{output_dir.name}"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(output_dir, target_is_directory=True)
    return link


def _fit(cfg: DictConfig) -> dict[str, float]:
    ckpt_path = resolve_resume_checkpoint(cfg.get("ckpt_path"), cfg.paths.ckpt_dir, cfg.paths.run_dir)
    if ckpt_path is not None:
        check_resume_checkpoint(ckpt_path, cfg)
    datamodule = instantiate(cfg.data)
    task = instantiate(cfg.task)
    task.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = build_callbacks(cfg.get("callbacks"))
    loggers = build_loggers(cfg.get("logger"), run_dir=cfg.paths.run_dir, resuming=ckpt_path is not None)
    try:
        trainer = build_trainer(cfg, callbacks, loggers, datamodule)
        log_hyperparameters(trainer.loggers, cfg, task)
        log.info(
            "run %s: checkpoints in %s, outputs in %s", cfg.run_name, cfg.paths.ckpt_dir, cfg.paths.output_dir
        )
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
        return _scalar_metrics(dict(trainer.callback_metrics))
    finally:
        close = getattr(datamodule, "close", None)
        if close is not None:  # a background generation stops with the run, however the run ends
            close()
        finish_wandb()
