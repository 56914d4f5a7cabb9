"""Evaluate a downstream checkpoint on its task's test split (metrics JSON + prediction panel).

    python eval.py ckpt=logs/runs/depth_synthetic/checkpoints/last.ckpt baseline=true
    python eval.py ckpt=depth_nyu.ckpt data.root=/datasets/nyuv2

Everything happens in ``croco.tasks.evaluate.evaluate``; see docs/downstream.md.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import croco.utils.resolvers  # noqa: F401 - registers the croco.* resolvers before Hydra composes


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from croco.tasks.evaluate import evaluate

    try:
        evaluate(cfg)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError, ConfigError and data errors: one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
