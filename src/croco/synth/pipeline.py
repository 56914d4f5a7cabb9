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

import contextlib
import dataclasses
import math
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from croco.data.shards import NoSpaceError, ShardError, ShardReader, ShardWriter, is_no_space
from croco.synth.render import CpuRenderer, Renderer, SceneUnusable
from croco.synth.sampler import GenerationStats, PairOptions, PairSampler, ViewPair, pair_record, pair_rng
from croco.synth.scene import SURFACE_CLASSES
from croco.synth.viewpoints import NavigableScene, SamplingRules
from croco.utils.files import remove_stale_temporaries
from croco.utils.locks import FolderLock, pid_alive

RENDERERS = ("cpu", "habitat")
PIXEL_CONVENTION = "pixel (row v, col u) has its centre at (u + 0.5, v + 0.5); K principal point W/2, H/2"
GENERATOR_NAME = "croco.data.generate"
"""The generator's name in shard attributes (the resume check compares it; kept from the first release so that
shards written then still resume)."""
GENERATOR_VERSION = 2
"""Bumped when the same settings would produce different pairs (resume refuses to mix versions). 2: rooms with
doors, windows, curved primitives and more furniture, aperiodic textures with a macro layer, the structure
filter."""


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during generation, after the clean-up; the message counts the finished shards that were kept."""


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
            "scene_dataset_config": self.scene_dataset_config or "",
            "with_depth": bool(self.depth or options.task != "pretrain"),
            "world_frame": "y up, floor at y=0, metres",
            "camera_axes": "OpenCV (x right, y down, z forward); poses camera-to-world",
            "pixel_convention": PIXEL_CONVENTION,
            "sampling_rules": dataclasses.asdict(options.rules),
            "habitat_scenes": list(self.habitat_scenes),
            # names of the semantics1/semantics2 values (stored by the CPU renderer for the task shards)
            "surface_classes": list(SURFACE_CLASSES)
            if self.renderer == "cpu" and options.task != "pretrain"
            else [],
        }


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
) -> tuple[ViewPair, str]:
    """The pair of one slot, from its scene. A scene that gives no pair (no navmesh, nothing in the overlap
    range) is skipped, counted and logged, and the slot tries the next scene index: the same choice whatever
    the split into jobs, workers and resumes, since it depends on the slot alone."""
    first = pair_index // config.pairs_per_scene
    for offset in range(MAX_SCENE_FALLBACKS):
        try:
            scene = _worker_scene(config, first + offset)
            pair = sampler.sample(scene, pair_rng(config.seed, config.options.task, pair_index), stats)
            return pair, scene.scene_id
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
        for pair_index in range(job.first_pair, job.first_pair + job.count):
            pair, scene_id = _sample_slot(config, sampler, pair_index, stats)
            writer.add(
                pair_record(
                    pair, scene_id, config.options.task, with_depth=config.depth, rtol=config.options.rtol
                )
            )
            if on_pair is not None:
                on_pair()
        # attempt/reject counts are known only now: stored as the shard attribute generation_stats
        writer.update_attrs({"generation_stats": stats.as_dict()})
    return job.path, stats.as_dict()


# --------------------------------------------------------------------------------------------- driver


_PROGRESS = None  # multiprocessing.Value in pool workers


def _init_worker(counter) -> None:
    global _PROGRESS
    _PROGRESS = counter
    # Ctrl-C reaches the whole process group: the parent alone reports it and terminates the workers, instead
    # of every worker printing its own traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_write_shard(job: ShardJob) -> tuple[str, dict[str, int]]:
    def tick() -> None:
        with _PROGRESS.get_lock():
            _PROGRESS.value += 1

    return write_shard(job, tick)


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
        if _normalise_attr(found.get(key)) != _normalise_attr(value):
            raise ValueError(
                f"{path}: existing shard has {key}={found.get(key)!r}, this run wants {value!r}; use another "
                "out folder or delete the old shards"
            )
    if len(reader) != job.count:
        raise ValueError(f"{path}: existing shard has {len(reader)} pairs, this run wants {job.count}")


def _normalise_attr(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise_attr(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise_attr(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float):
        return round(value, 9)
    return value


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
    pairs per scene, cycling) with habitat-sim. ``depth`` stores depth maps for ``pretrain`` (other tasks
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
    )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"{out}: exists and is not a folder; the shards need a folder (choose another out folder)"
        )
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
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _generation_lock(out, num_jobs, job_index):
            _generate_locked(out, jobs, num_jobs, workers, progress, f"task={task}, renderer={renderer}")
    except NoSpaceError:
        raise
    except OSError as error:  # a full disk outside the shard writers (the folder, the lock file)
        if is_no_space(error):
            raise NoSpaceError(
                f"no space left on {out}: free some space and rerun the same command"
            ) from error
        raise
    return [Path(job.path) for job in jobs]


def _generate_locked(
    out: Path, jobs: list[ShardJob], num_jobs: int, workers: int, progress: bool, describe: str
) -> None:
    """Check the finished shards and write the missing ones, while this process holds the folder's lock."""
    config = jobs[0].config if jobs else None
    stale = _remove_temporaries(out, jobs, num_jobs)
    pending: list[ShardJob] = []
    for job in jobs:
        path = Path(job.path)
        if path.exists():
            assert config is not None
            _check_existing(path, config, job)
            continue
        pending.append(job)
    kept = len(jobs) - len(pending)
    todo = sum(job.count for job in pending)
    size = f"{config.resolution}x{config.resolution}" if config is not None else "-"
    print(
        f"[generate] {out}: {len(jobs)} shard(s) in this job, {kept} finished and kept, "
        f"{len(pending)} to write ({todo} pairs, {describe}, {size})"
        + (f"; removed {stale} stale temporary file(s)" if stale else ""),
        flush=True,
    )
    if not pending:
        return
    try:
        totals, seconds = _run_jobs(pending, todo, workers, progress)
    except BaseException as error:
        _remove_temporaries(out, jobs, num_jobs)  # what terminated workers (or this process) left
        finished = sum(Path(job.path).exists() for job in jobs)
        kept_text = f"{finished} finished shard{'' if finished == 1 else 's'} kept in {out}"
        if isinstance(error, KeyboardInterrupt):
            raise GenerationInterrupted(
                f"interrupted: {kept_text}, rerun the same command to resume"
            ) from None
        if is_no_space(error):
            raise NoSpaceError(
                f"no space left on {out}: {kept_text}, no temporary file left; free some space (or choose "
                "another out folder) and rerun the same command to resume"
            ) from error
        raise
    print(
        f"[generate] {todo} pairs in {seconds:.1f} s: {todo / max(seconds, 1e-9):.1f} pairs/s; "
        f"{totals.summary()}",
        flush=True,
    )


class _JobLock(FolderLock):
    """A ``FolderLock`` under another file name: one per cluster job, see ``generate_pairs``."""

    def __init__(self, folder: Path, what: str, name: str) -> None:
        super().__init__(folder, what)
        self._name = name

    @property
    def path(self) -> Path:
        return self.folder / self._name


def _generation_lock(out: Path, num_jobs: int, job_index: int) -> FolderLock:
    if num_jobs == 1:
        return FolderLock(out, "pair generation")
    return _JobLock(
        out, f"pair generation job {job_index} of {num_jobs}", f".lock-job-{job_index}-of-{num_jobs}"
    )


_TEMPORARY = re.compile(r"^(?P<name>.+?)\.tmp-(?P<pid>\d+)(\..*)?$")


def _remove_temporaries(out: Path, jobs: list[ShardJob], num_jobs: int) -> int:
    """Delete the temporary files that no running writer owns; returns how many.

    Those are the files of dead processes (a killed run, pool workers just terminated) and this process's own
    (no writer of it is open when this runs, and a container may give a new run the old run's pid). A single
    generation holds the whole folder and clears it with ``remove_stale_temporaries``; a cluster job touches
    only its own shards' files, since another job may write from another machine, where its pid means nothing
    here.
    """
    removed = len(remove_stale_temporaries(out)) if num_jobs == 1 else 0
    names = {Path(job.path).name for job in jobs}
    for path in out.glob("*.tmp-*"):
        match = _TEMPORARY.match(path.name)
        if match is None or match["name"] not in names or not path.is_file():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or not pid_alive(pid):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while pool workers start: spawned interpreters inherit the ignored signal and keep it, so
    an early Ctrl-C cannot interrupt their start-up (``_init_worker`` ignores it for good)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


def _run_jobs(
    jobs: list[ShardJob], total: int, workers: int, progress: bool
) -> tuple[GenerationStats, float]:
    from tqdm import tqdm

    totals = GenerationStats()
    start = time.perf_counter()
    bar = tqdm(
        total=total, unit="pair", disable=not progress, desc="generate", dynamic_ncols=True, mininterval=1.0
    )

    def refresh(done: int) -> None:
        if done > bar.n:
            elapsed = time.perf_counter() - start
            bar.set_postfix_str(f"{done / max(elapsed, 1e-9):.1f} pairs/s", refresh=False)
            bar.update(done - bar.n)  # tqdm throttles the redraws (mininterval)

    try:
        if workers <= 1 or len(jobs) == 1:
            done = 0

            def tick() -> None:
                nonlocal done
                done += 1
                refresh(done)

            for job in jobs:
                _, stats = write_shard(job, tick)
                totals.add(GenerationStats(**stats))
        else:
            context = multiprocessing.get_context("spawn")
            counter = context.Value("q", 0)
            with _sigint_ignored():
                pool = context.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(counter,))
            with pool:  # leaving it (also by an error or Ctrl-C) terminates the workers
                pending = pool.map_async(_pool_write_shard, jobs, chunksize=1)
                while not pending.ready():
                    pending.wait(0.5)
                    refresh(counter.value)
                for _, stats in pending.get():
                    totals.add(GenerationStats(**stats))
            refresh(counter.value)
    finally:
        bar.close()
    return totals, time.perf_counter() - start
