"""Generate CroCo view pairs into shards.

    python generate.py source=synthetic out=data/synthetic pairs=10000 seed=0
    python generate.py source=synthetic task=flow out=data/synthetic_flow pairs=2000 workers=2

Everything happens in ``croco.synth.pipeline.generate_pairs``; options are documented in conf/generate.yaml.

Failures are one line on stderr, ``error: ...``, naming the path or key and what to do, with exit code 2: a
wrong ``out`` (an existing file), an existing shard made with other settings, an output folder that another
generation holds, a full disk. Ctrl-C exits with 130 after removing the temporary files and says how many
finished shards were kept; the same command resumes. ``CROCO_DEBUG=1`` shows the full traceback instead (as in
train.py).
"""

from __future__ import annotations

import os
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


EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def one_line(error: BaseException) -> str:
    """The first line of an error's message; unexpected error types keep their name (they are bugs)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    # OSError: files and the full disk; RuntimeError: the folder lock, a scene source that gives no pair
    expected = (ValueError, OSError, ImportError, RuntimeError)
    return text if isinstance(error, expected) and text else f"{type(error).__name__}: {text or 'no message'}"


def run(cfg: DictConfig) -> int:
    """Generate as ``cfg`` says; returns the exit code after printing a failure as one line on stderr."""
    from croco.synth.pipeline import generate_pairs

    debug = os.environ.get("CROCO_DEBUG") == "1"
    try:
        generate_pairs(**generate_kwargs(cfg))
    except KeyboardInterrupt as error:
        if debug:
            raise
        print(f"error: {str(error) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # one line, not a stack trace (CROCO_DEBUG=1 shows it)
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    if os.environ.get("CROCO_DEBUG") == "1":
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra would otherwise trim the traceback it prints
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    exit_on_unknown_choices(sys.argv[1:])
    main()
