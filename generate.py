"""Generate CroCo view pairs into shards.

    python generate.py source=synthetic out=data/synthetic pairs=10000 seed=0
    python generate.py source=synthetic task=flow out=data/synthetic_flow pairs=2000 workers=2
    python generate.py source=habitat scene_dataset=hm3d split=train out=data/habitat_hm3d_train
    python generate.py source=habitat metadata=pairs.json out=data/rerender
    python generate.py source=folder input=/data/my_pairs out=data/my_pairs          # import existing pairs
    python generate.py source=colmap input=/data/colmap_project out=data/my_colmap

Generation happens in ``croco.synth.pipeline.generate_pairs``, imports (sources with an ``importer`` key) in
``croco.importers``; options are documented in conf/generate.yaml and conf/source/.

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
    habitat = habitat_kwargs(cfg) if source.renderer == "habitat" else {}
    pairs = cfg.pairs
    if pairs is None and habitat:  # every scene once
        pairs = len(habitat["habitat_scenes"]) * int(cfg.pairs_per_scene)
    kwargs = {
        "out_dir": to_absolute_path(str(cfg.out)),
        "pairs": int(pairs),
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
    kwargs.update(habitat)
    return kwargs


def habitat_kwargs(cfg: DictConfig) -> dict:
    """The habitat scenes of ``scene_dataset`` / ``split`` / ``scenes`` (conf/source/habitat.yaml) as
    ``generate_pairs`` arguments. habitat-sim is checked first, so that a machine without it gets the one-line
    install hint before anything else is looked at."""
    from croco.synth.habitat import require_habitat, resolve_scene_dataset
    from croco.synth.pipeline import expand_scene_paths

    require_habitat()
    source = cfg.source
    data_root = to_absolute_path(str(source.data_root))
    scenes = [str(s) for s in OmegaConf.to_container(cfg.scenes)]
    config_file = source.scene_dataset_config
    if cfg.scene_dataset:
        files, preset_config = resolve_scene_dataset(
            str(cfg.scene_dataset), OmegaConf.to_container(source.datasets), data_root, cfg.split, scenes
        )
        config_file = to_absolute_path(str(config_file)) if config_file else preset_config
    else:
        files = expand_scene_paths([to_absolute_path(s) for s in scenes])
        config_file = to_absolute_path(str(config_file)) if config_file else None
    return {
        "habitat_scenes": [str(f) for f in files],
        "scene_dataset_config": str(config_file) if config_file else None,
        "gpu_device_id": int(source.gpu_device_id),
        "scene_root": data_root,
    }


def render_metadata(cfg: DictConfig) -> None:
    """``source=habitat metadata=FILE``: render exactly the pairs a metadata file lists."""
    from croco.synth.habitat import require_habitat
    from croco.synth.metadata import render_metadata_file

    require_habitat()
    config_file = cfg.source.scene_dataset_config
    render_metadata_file(
        to_absolute_path(str(cfg.metadata)),
        to_absolute_path(str(cfg.out)),
        data_root=to_absolute_path(str(cfg.source.data_root)),
        scene_dataset_config=to_absolute_path(str(config_file)) if config_file else None,
        gpu_device_id=int(cfg.source.gpu_device_id),
        depth=bool(cfg.depth),
        jpeg_quality=int(cfg.jpeg_quality),
        workers=int(cfg.workers),
        num_jobs=int(cfg.num_jobs),
        job_index=int(cfg.job_index),
        progress=bool(cfg.progress),
    )


def import_source(cfg: DictConfig) -> None:
    """``source=<importer>`` (a source config with an ``importer`` key, e.g. conf/source/folder.yaml): import
    the pairs found at ``input`` into shards with ``croco.importers.<importer>``."""
    import inspect

    from croco.importers.base import import_pairs, load_importer, settings_from

    source = cfg.source
    if not cfg.get("input"):
        raise ValueError(f"input: source={source.name} imports existing data; set input=<folder or file>")
    importer_class = load_importer(str(source.importer))
    options = OmegaConf.to_container(source.options, resolve=True) if source.get("options") else {}
    accepted = [
        name
        for name, parameter in inspect.signature(importer_class.__init__).parameters.items()
        if parameter.kind == inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"source.options: unknown key(s) {unknown} for source={source.name}; expected {accepted}"
        )
    settings = settings_from(
        to_absolute_path(str(cfg.input)),
        resolution=int(cfg.resolution),
        depth=bool(cfg.depth),
        overlap_min=float(cfg.overlap_min),
        overlap_max=float(cfg.overlap_max),
    )
    import_pairs(
        importer_class(settings, **options),
        to_absolute_path(str(cfg.out)),
        pairs_per_shard=int(cfg.pairs_per_shard),
        jpeg_quality=int(cfg.jpeg_quality),
        workers=int(cfg.workers),
        num_jobs=int(cfg.num_jobs),
        job_index=int(cfg.job_index),
        progress=bool(cfg.progress),
    )


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
        if cfg.source.get("importer"):
            import_source(cfg)
        elif cfg.get("metadata"):
            render_metadata(cfg)
        else:
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
