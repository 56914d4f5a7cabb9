"""Train a CroCo task (pretraining by default: ``conf/task/``).

    python train.py experiment=pretrain                      # CroCo v1 recipe (embedded data, generated on first use)
    python train.py experiment=smoke                         # tiny model, learns visibly on a CPU in minutes
    python train.py -m experiment=smoke masking.ratio=0.5,0.75,0.9 data.overlap_min=0.2,0.5
    python train.py experiment=pretrain trainer=ddp trainer.devices=8
    python train.py experiment=depth_synthetic finetune.init=logs/runs/smoke/checkpoints/last.ckpt

Everything happens in ``croco.tasks.training.train``; see docs/pretraining.md and docs/downstream.md.

Errors are one line on stderr (exit code 2; the traceback goes to ``traceback.txt`` in the launch folder, and to
the terminal with ``CROCO_DEBUG=1``). In a multirun a failing job is reported with its overrides and the other
jobs still run; the sweep then exits with 1. What to do in each case: docs/troubleshooting.md.
"""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

import croco.utils.resolvers  # noqa: F401 - registers the croco.* resolvers before Hydra composes
from croco.utils.config import ConfigError, exit_on_unknown_choices

FAILED_JOBS: list[str] = []
"""Failed jobs of this process's multirun (the basic launcher runs them here, one after another)."""


def _launch_folder() -> tuple[Path | None, bool]:
    """(this job's Hydra output folder, whether this is a multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, False
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.runtime.output_dir), hydra_cfg.mode == RunMode.MULTIRUN


def _remove_rejected_launch(folder: Path, stop: Path) -> None:
    """A rejected config leaves no run behind: delete the launch folder when it holds only Hydra's own files
    (the config snapshot and the log), then its parents up to ``stop`` while they are empty."""
    if not folder.is_dir() or any(p.name not in (".hydra", "train.log") for p in folder.iterdir()):
        return
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    while parent != stop and parent.is_dir() and stop in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    known = (ConfigError, ValueError, FloatingPointError, OSError, RuntimeError)
    return text if isinstance(error, known) and text else f"{type(error).__name__}: {text or 'no message'}"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    folder, multirun = _launch_folder()
    try:
        from croco.tasks.checks import validate_train_config

        try:
            validate_train_config(cfg)  # before Lightning is imported and anything is built
        except ConfigError:
            if folder is not None and not multirun:
                _remove_rejected_launch(folder, stop=Path(cfg.paths.ckpt_root).resolve())
            raise
        from croco.tasks.training import train

        metrics = train(cfg)
    except Exception as error:
        if os.environ.get("CROCO_DEBUG") == "1":
            raise
        message = _one_line(error)
        if folder is not None and folder.is_dir():
            (folder / "traceback.txt").write_text(traceback.format_exc())
            message += f" (traceback: {folder / 'traceback.txt'})"
        if multirun:
            from hydra.core.hydra_config import HydraConfig

            hydra_cfg = HydraConfig.get()
            FAILED_JOBS.append(f"job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task) or 'no overrides'})")
            print(f"error: {FAILED_JOBS[-1]}: {message}", file=sys.stderr)
            return None  # the other jobs of the sweep still run
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("val/loss")


if __name__ == "__main__":
    exit_on_unknown_choices(sys.argv[1:])
    main()
    if FAILED_JOBS:
        print(f"error: {len(FAILED_JOBS)} job(s) of the sweep failed: {'; '.join(FAILED_JOBS)}", file=sys.stderr)
        sys.exit(1)
