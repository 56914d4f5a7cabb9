"""Predict disparity or optical flow for one image pair (raw PFM / .flo, pictures, confidence).

    python predict.py task=stereo ckpt=logs/runs/stereo_synthetic/checkpoints/last.ckpt img1=left.png \
        img2=right.png out=pred/
    python predict.py task=flow ckpt=crocoflow.pth img1=frame1.png img2=frame2.png out=pred/ overlap=0.9

Everything happens in ``croco.tasks.predict.predict_pair``; see docs/downstream.md.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from croco.tasks.predict import predict_pair

    try:
        files = predict_pair(cfg.ckpt, str(cfg.task), cfg.img1, cfg.img2, cfg.out, float(cfg.overlap), str(cfg.device))
    except (ValueError, FileNotFoundError) as e:  # CheckpointError and bad images included: one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for name, path in files.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
