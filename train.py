"""Train a CroCo task (pretraining by default: ``conf/task/``).

    python train.py experiment=pretrain                      # CroCo v1 recipe (embedded data, generated on first use)
    python train.py experiment=smoke                         # tiny model, learns visibly on a CPU in minutes
    python train.py -m experiment=smoke masking.ratio=0.5,0.75,0.9 data.overlap_min=0.2,0.5
    python train.py experiment=pretrain trainer=ddp trainer.devices=8

Everything happens in ``croco.tasks.training.train``; see docs/pretraining.md.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import croco.utils.resolvers  # noqa: F401 - registers the croco.* resolvers before Hydra composes
from croco.tasks.checks import validate_train_config
from croco.utils.config import ConfigError, exit_on_unknown_choices


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        validate_train_config(cfg)  # before Lightning is imported and anything is built
        from croco.tasks.training import train

        metrics = train(cfg)
    except ConfigError as e:  # one line, not a stack trace
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("val/loss")


if __name__ == "__main__":
    exit_on_unknown_choices(sys.argv[1:])
    main()
