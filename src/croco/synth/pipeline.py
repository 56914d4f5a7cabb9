"""Pair generation: sample views of many scenes after CroCo's Habitat rules and write them into shards.

One pipeline for every scene source: a ``NavigableScene`` (procedural room or habitat navmesh) gives camera
positions, a ``Renderer`` gives RGB + exact depth, ``croco.synth.sampler.PairSampler`` chooses and scores the
pair, and ``croco.data.shards.ShardWriter`` stores it.

Determinism: scene ``i`` is built from ``(seed, i)`` and pair ``g`` draws from its own generator seeded by
``(seed, task, g)``; pair ``g`` belongs to scene ``g // pairs_per_scene`` and to shard ``g //
pairs_per_shard``. So the output is identical however generation is split (``workers``,
``num_jobs``/``job_index``) or resumed (finished shards are kept after checking that they were made with the
same settings).

Faults (docs/data-format.md, "Guarantees and errors"): a generation locks its output folder (a cluster job
only its own block of shards), so a second launch on the same folder stops at once instead of deleting the
first one's files; temporary files are removed only when no running process owns them; a full disk and Ctrl-C
stop with one line, leave the finished shards and no temporary file, and the same command resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from croco.data.shard_jobs import (  # noqa: F401  (GenerationInterrupted: raised from here, imported from here)
    GenerationInterrupted,
    normalise_attr,
    run_shard_jobs,
)
from croco.data.shards import ShardError, ShardReader, ShardWriter
from croco.synth.render import CpuRenderer, Renderer, SceneUnusable
from croco.synth.sampler import GenerationStats, PairOptions, PairSampler, ViewPair, pair_record, pair_rng
from croco.synth.scene import SURFACE_CLASSES
from croco.synth.viewpoints import NavigableScene, SamplingRules

RENDERERS = ("cpu", "habitat")
SCENE_FILES = "scene_files"
"""Shard attribute of habitat shards: the scene files of its pairs (relative to the scene-dataset root)."""
SCENE_FILE_INDEX = "scene_file_index"
"""Per-pair extra of habitat shards: the index of the pair's scene file in ``scene_files``."""
PIXEL_CONVENTION = "pixel (row v, col u) has its centre at (u + 0.5, v + 0.5); K principal point W/2, H/2"
GENERATOR_NAME = "croco.data.generate"
"""The generator's name in shard attributes (the resume check compares it; kept from the first release so that
shards written then still resume)."""
GENERATOR_VERSION = 2
"""Bumped when the same settings would produce different pairs (resume refuses to mix versions). 2: rooms with
doors, windows, curved primitives and more furniture, aperiodic textures with a macro layer, the structure
filter."""


# --------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that determines the content of the shards (compared on resume)."""

    seed: int = 0
    resolution: int = 256
    pairs_per_scene: int = 5
    renderer: str = "cpu"
    depth: bool = True
    jpeg_quality: int = 95
    options: PairOptions = field(default_factory=PairOptions)
    habitat_scenes: tuple[str, ...] = ()
    scene_dataset_config: str | None = None
    gpu_device_id: int = 0
    scene_root: str | None = None
    """Folder the habitat scene files are recorded relative to (``scene_files``), so metadata stays portable."""

    @property
    def source(self) -> str:
        return "synthetic" if self.renderer == "cpu" else "habitat"

    def shard_attrs(self) -> dict[str, Any]:
        """Attributes identifying how a shard was made (the resume check compares them)."""
        options = self.options
        return {
            "generator": GENERATOR_NAME,
            "generator_version": GENERATOR_VERSION,
            "task": options.task,
            "seed": self.seed,
            "renderer": self.renderer,
            "pairs_per_scene": self.pairs_per_scene,
            "overlap_min": float(options.overlap_min),
            "overlap_max": float(options.overlap_max),
            "covisibility_rtol": float(options.rtol),
            # every other option that changes which pairs come out (and how they are encoded)
            "pair_options": {
                k: v
                for k, v in dataclasses.asdict(options).items()
                if k not in ("task", "overlap_min", "overlap_max", "rtol", "rules")
            },
            "scene_dataset_config": _relative(self.scene_dataset_config, self.scene_root),
            "with_depth": bool(self.depth or options.task != "pretrain"),
            "world_frame": "y up, floor at y=0, metres",
            "camera_axes": "OpenCV (x right, y down, z forward); poses camera-to-world",
            "pixel_convention": PIXEL_CONVENTION,
            "sampling_rules": dataclasses.asdict(options.rules),
            # the scene list can hold thousands of paths, more than an HDF5 attribute holds: its digest
            "habitat_scene_count": len(self.habitat_scenes),
            "habitat_scenes_sha1": hashlib.sha1("\n".join(self.habitat_scenes).encode()).hexdigest()
            if self.habitat_scenes
            else "",
            # names of the semantics1/semantics2 values (stored by the CPU renderer for the task shards)
            "surface_classes": list(SURFACE_CLASSES)
            if self.renderer == "cpu" and options.task != "pretrain"
            else [],
        }


def _relative(path: str | None, root: str | None) -> str:
    """A habitat file as shards record it: relative to the scene-dataset root when under it ("" for none)."""
    if not path:
        return ""
    from croco.synth.habitat import relative_scene_file

    return relative_scene_file(path, root)


@dataclass(frozen=True)
class ShardJob:
    index: int
    first_pair: int
    count: int
    path: str
    config: GeneratorConfig


_WORKER: dict[str, Any] = {}
"""Per-process state: renderers, sampler and the last scene (reused across the shards a process writes)."""


def _worker_sampler(config: GeneratorConfig) -> PairSampler:
    key = ("sampler", config)
    if _WORKER.get("key") != key:
        for renderer in _WORKER.get("renderers", []):
            renderer.close()
        size = config.resolution
        if config.renderer == "cpu":
            # semantics are needed by the non-pretrain tasks and by the structure check (one gather, ~free)
            semantics = config.options.task != "pretrain" or config.options.min_structure > 0
            renderer: Renderer = CpuRenderer(
                size, size, semantics=semantics, specular=config.options.specular
            )
            screen_size = config.options.screen_resolution
            screen = (
                CpuRenderer(screen_size, screen_size, semantics=False) if 0 < screen_size < size else None
            )
        else:
            from croco.synth.habitat import HabitatRenderer

            renderer = HabitatRenderer(
                (size, size),
                config.options.rules.hfov_deg,
                scene_dataset_config=config.scene_dataset_config,
                gpu_device_id=config.gpu_device_id,
            )
            screen = None
        _WORKER.clear()
        _WORKER.update(
            key=key,
            renderers=[r for r in (renderer, screen) if r is not None],
            sampler=PairSampler(renderer, config.options, screen_renderer=screen),
            scene=None,
        )
    return _WORKER["sampler"]


def _worker_scene(config: GeneratorConfig, scene_index: int) -> NavigableScene:
    cached = _WORKER.get("scene")
    if cached is not None and cached[0] == scene_index:
        return cached[1]
    if config.renderer == "cpu":
        from croco.synth.room import build_synthetic_scene

        scene: NavigableScene = build_synthetic_scene(config.seed, scene_index)
    else:
        renderer = _WORKER["sampler"].renderer
        scene = renderer.load_scene(config.habitat_scenes[scene_index % len(config.habitat_scenes)])
    _WORKER["scene"] = (scene_index, scene)
    return scene


MAX_SCENE_FALLBACKS = 8


def _sample_slot(
    config: GeneratorConfig, sampler: PairSampler, pair_index: int, stats: GenerationStats
) -> tuple[ViewPair, NavigableScene]:
    """The pair of one slot, from its scene. A scene that gives no pair (no navmesh, nothing in the overlap
    range) is skipped, counted and logged, and the slot tries the next scene index: the same choice whatever
    the split into jobs, workers and resumes, since it depends on the slot alone."""
    first = pair_index // config.pairs_per_scene
    for offset in range(MAX_SCENE_FALLBACKS):
        try:
            scene = _worker_scene(config, first + offset)
            pair = sampler.sample(scene, pair_rng(config.seed, config.options.task, pair_index), stats)
            return pair, scene
        except SceneUnusable as error:
            stats.scenes_skipped += 1
            print(f"[generate] skipped: {error}", flush=True)
    raise RuntimeError(
        f"pair {pair_index}: {MAX_SCENE_FALLBACKS} scenes in a row gave no pair; check the scene source and "
        f"the overlap range [{config.options.overlap_min}, {config.options.overlap_max}]"
    )


def write_shard(job: ShardJob, on_pair: Callable[[], None] | None = None) -> tuple[str, dict[str, int]]:
    """Generate and write one shard (atomically); returns (path, stats). Runs in a worker or in-process."""
    config = job.config
    sampler = _worker_sampler(config)
    stats = GenerationStats()
    size = config.resolution
    attrs = {**config.shard_attrs(), "shard_index": job.index, "first_pair": job.first_pair}
    with ShardWriter(
        job.path,
        source=config.source,
        resolution=(size, size),
        fov_deg=config.options.rules.hfov_deg,
        jpeg_quality=config.jpeg_quality,
        attrs=attrs,
    ) as writer:
        scene_files: list[str] = []  # habitat: the scene file of every pair, for the metadata export
        for pair_index in range(job.first_pair, job.first_pair + job.count):
            pair, scene = _sample_slot(config, sampler, pair_index, stats)
            record = pair_record(
                pair, scene.scene_id, config.options.task, with_depth=config.depth, rtol=config.options.rtol
            )
            if config.renderer == "habitat":
                scene_file = _relative(scene.path, config.scene_root)
                if scene_file not in scene_files:
                    scene_files.append(scene_file)
                record.extras[SCENE_FILE_INDEX] = np.int32(scene_files.index(scene_file))
            writer.add(record)
            if on_pair is not None:
                on_pair()
        # attempt/reject counts are known only now: stored as the shard attribute generation_stats
        writer.update_attrs({"generation_stats": stats.as_dict()})
        if scene_files:
            writer.update_attrs({SCENE_FILES: scene_files})
    return job.path, stats.as_dict()


# --------------------------------------------------------------------------------------------- driver


def _write_shard_stats(job: ShardJob, on_pair: Callable[[], None] | None = None) -> dict[str, int]:
    """``write_shard`` as the shared runner calls it (``croco.data.shard_jobs``): the statistics only."""
    return write_shard(job, on_pair)[1]


def _check_existing(path: Path, config: GeneratorConfig, job: ShardJob) -> None:
    """A finished shard is kept only if it was made with the same settings; otherwise a one-line error."""
    try:
        reader = ShardReader(path)
    except ShardError as error:
        raise ShardError(f"{error}; delete it and rerun to generate it again") from None
    expected = {**config.shard_attrs(), "shard_index": job.index, "first_pair": job.first_pair}
    expected["resolution"] = [config.resolution, config.resolution]
    expected["jpeg_quality"] = config.jpeg_quality  # a schema attribute, written by the ShardWriter
    found = dict(reader.attrs)
    for key, value in expected.items():
        if normalise_attr(found.get(key)) != normalise_attr(value):
            raise ValueError(
                f"{path}: existing shard has {key}={found.get(key)!r}, this run wants {value!r}; use another "
                "out folder or delete the old shards"
            )
    if len(reader) != job.count:
        raise ValueError(f"{path}: existing shard has {len(reader)} pairs, this run wants {job.count}")


def generate_pairs(
    out_dir: str | os.PathLike,
    pairs: int,
    *,
    seed: int = 0,
    resolution: int = 256,
    pairs_per_shard: int = 500,
    overlap_min: float = 0.05,
    overlap_max: float = 0.95,
    progress: bool = True,
    renderer: str = "cpu",
    task: str = "pretrain",
    pairs_per_scene: int = 5,
    depth: bool = True,
    workers: int = 0,
    num_jobs: int = 1,
    job_index: int = 0,
    hfov_deg: float = 60.0,
    jpeg_quality: int = 95,
    max_second_attempts: int = 100,
    screen_resolution: int = 64,
    habitat_scenes: Sequence[str] = (),
    scene_dataset_config: str | None = None,
    gpu_device_id: int = 0,
    scene_root: str | None = None,
    min_structure: float = 0.25,
    exposure_std: float = 0.0,
    white_balance_std: float = 0.0,
    noise_std: float = 0.0,
    specular: float = 0.0,
    stereo_baseline: Sequence[float] = (0.05, 0.3),
    flow_translation_std: float = 0.25,
    flow_rotation_deg: Sequence[float] = (8.0, 4.0, 2.0),
) -> list[Path]:
    """Generate ``pairs`` pairs into ``out_dir/shard-00000.h5 ...`` and return this job's shard paths.

    Deterministic for a seed; resumable (finished shards are checked and kept, temporary files that no running
    process owns are removed). ``workers`` > 1 writes shards in that many processes;
    ``num_jobs``/``job_index`` split the shards into contiguous blocks so that cluster jobs write disjoint
    files of the same dataset. ``renderer='habitat'`` renders the ``habitat_scenes`` files (``pairs_per_scene``
    pairs per scene, cycling) with habitat-sim; its shards record each pair's scene file (``scene_files``,
    relative to ``scene_root`` when given) for ``croco.synth.metadata``. ``depth`` stores depth maps for ``pretrain`` (other tasks
    always do).

    The output folder is locked for the whole generation (``croco.utils.locks.FolderLock``): a second
    generation on it raises ``FolderLocked`` at once, naming the folder and the holder. A cluster job
    (``num_jobs`` > 1) locks only its block (``.lock-job-<job_index>-of-<num_jobs>``), so jobs writing
    disjoint shards never block each other, while two launches of the same job do; a single generation and
    cluster jobs on one folder do not see each other's locks (do not mix them). A full disk raises
    ``NoSpaceError`` and Ctrl-C ``GenerationInterrupted``, both after removing the temporary files; finished
    shards stay and the same call resumes.

    ``pairs_per_scene`` consecutive pairs share a scene (default 5: more scenes per dataset, at ~70 ms of
    scene building per scene on one core). ``min_structure`` rejects views with less than that share of
    non-bare pixels (0: off; needs semantics, so only the CPU renderer applies it). ``exposure_std`` (stops),
    ``white_balance_std``, ``noise_std`` (grey levels) and ``specular`` add per-view appearance changes (0:
    off); see ``croco.synth.sampler``. ``stereo_baseline`` (metres, range) and ``flow_translation_std`` (metres),
    ``flow_rotation_deg`` (pan, tilt, roll stds) size the second camera of the stereo and flow tasks.
    """
    _check_positive(
        pairs=pairs,
        resolution=resolution,
        pairs_per_shard=pairs_per_shard,
        pairs_per_scene=pairs_per_scene,
        num_jobs=num_jobs,
        max_second_attempts=max_second_attempts,
    )
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    if not 0 <= job_index < num_jobs:
        raise ValueError(f"job_index must be in [0, num_jobs={num_jobs}), got {job_index}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if renderer == "habitat":
        from croco.synth.habitat import require_habitat

        require_habitat()
        habitat_scenes = expand_scene_paths(habitat_scenes)
    options = PairOptions(
        task=task,
        overlap_min=float(overlap_min),
        overlap_max=float(overlap_max),
        rules=SamplingRules(hfov_deg=float(hfov_deg)),
        max_second_attempts=int(max_second_attempts),
        screen_resolution=int(screen_resolution) if renderer == "cpu" else 0,
        min_structure=float(min_structure),
        exposure_std=float(exposure_std),
        white_balance_std=float(white_balance_std),
        noise_std=float(noise_std),
        specular=float(specular),
        stereo_baseline=(float(stereo_baseline[0]), float(stereo_baseline[1])),
        flow_translation_std=float(flow_translation_std),
        flow_rotation_deg=tuple(float(d) for d in flow_rotation_deg),
    )
    config = GeneratorConfig(
        seed=int(seed),
        resolution=int(resolution),
        pairs_per_scene=int(pairs_per_scene),
        renderer=renderer,
        depth=bool(depth),
        jpeg_quality=int(jpeg_quality),
        options=options,
        habitat_scenes=tuple(str(s) for s in habitat_scenes),
        scene_dataset_config=scene_dataset_config,
        gpu_device_id=int(gpu_device_id),
        scene_root=str(scene_root) if scene_root else None,
    )
    out = Path(out_dir)
    shard_count = math.ceil(pairs / pairs_per_shard)
    per_job = math.ceil(shard_count / num_jobs)
    indices = range(job_index * per_job, min(shard_count, (job_index + 1) * per_job))
    jobs = [
        ShardJob(
            index,
            index * pairs_per_shard,
            min(pairs_per_shard, pairs - index * pairs_per_shard),
            str(out / f"shard-{index:05d}.h5"),
            config,
        )
        for index in indices
    ]
    result = run_shard_jobs(
        out,
        jobs,
        write=_write_shard_stats,
        check_existing=lambda job: _check_existing(Path(job.path), config, job),
        num_jobs=num_jobs,
        job_index=job_index,
        workers=workers,
        progress=progress,
        describe=f"task={task}, renderer={renderer}, {config.resolution}x{config.resolution}",
    )
    if result.stats:
        totals = GenerationStats()
        for stats in result.stats:
            totals.add(GenerationStats(**stats))
        print(
            f"[generate] {result.pairs} pairs in {result.seconds:.1f} s: "
            f"{result.pairs / max(result.seconds, 1e-9):.1f} pairs/s; {totals.summary()}",
            flush=True,
        )
    return [Path(job.path) for job in jobs]


def expand_scene_paths(patterns: Sequence[str]) -> list[str]:
    """Scene files from paths and glob patterns (``**`` allowed), sorted per pattern; one-line error if a
    pattern matches nothing or the list ends up empty."""
    import glob

    scenes: list[str] = []
    for pattern in patterns:
        pattern = str(pattern)
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise FileNotFoundError(f"habitat_scenes: pattern {pattern!r} matches no file")
            scenes.extend(matches)
        elif not Path(pattern).exists():
            raise FileNotFoundError(f"habitat_scenes: scene file {pattern} does not exist")
        else:
            scenes.append(pattern)
    if not scenes:
        raise ValueError("renderer 'habitat' needs habitat_scenes (scene files or glob patterns), got none")
    return scenes


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
