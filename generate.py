"""Generate CroCo view pairs into shards.

    python generate.py source=synthetic out=data/synthetic pairs=10000 seed=0
    python generate.py source=synthetic task=flow out=data/synthetic_flow pairs=2000 workers=2

Everything happens in ``croco.synth.pipeline.generate_pairs``; options are documented in conf/generate.yaml.
"""

from __future__ import annotations

import sys

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from croco.utils.config import exit_on_unknown_choices


def generate_kwargs(cfg: DictConfig) -> dict:
    """Map the composed config onto ``generate_pairs`` arguments (paths relative to the launch folder)."""
    source = cfg.source
    kwargs = {
        "out_dir": to_absolute_path(str(cfg.out)),
        "pairs": int(cfg.pairs),
        "seed": int(cfg.seed),
        "task": str(cfg.task),
        "resolution": int(cfg.resolution),
        "hfov_deg": float(cfg.hfov_deg),
        "pairs_per_shard": int(cfg.pairs_per_shard),
        "pairs_per_scene": int(cfg.pairs_per_scene),
        "overlap_min": float(cfg.overlap_min),
        "overlap_max": float(cfg.overlap_max),
        "depth": bool(cfg.depth),
        "jpeg_quality": int(cfg.jpeg_quality),
        "max_second_attempts": int(cfg.max_second_attempts),
        "min_structure": float(cfg.min_structure),
        "exposure_std": float(cfg.exposure_std),
        "white_balance_std": float(cfg.white_balance_std),
        "noise_std": float(cfg.noise_std),
        "specular": float(cfg.specular),
        "workers": int(cfg.workers),
        "num_jobs": int(cfg.num_jobs),
        "job_index": int(cfg.job_index),
        "progress": bool(cfg.progress),
        "renderer": str(source.renderer),
        "screen_resolution": int(source.get("screen_resolution", 0)),
    }
    if source.renderer == "habitat":
        config_file = source.scene_dataset_config
        kwargs.update(
            habitat_scenes=[to_absolute_path(str(s)) for s in OmegaConf.to_container(source.scenes)],
            scene_dataset_config=to_absolute_path(str(config_file)) if config_file else None,
            gpu_device_id=int(source.gpu_device_id),
        )
    return kwargs


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from croco.synth.pipeline import generate_pairs

    try:
        generate_pairs(**generate_kwargs(cfg))
    except (ValueError, ImportError, FileNotFoundError) as error:  # one line, not a stack trace
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    exit_on_unknown_choices(sys.argv[1:])
    main()
