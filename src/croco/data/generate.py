"""Pair generation: sample views after CroCo's Habitat rules, keep pairs by co-visibility, write shards.

One pipeline for every scene source: a ``NavigableScene`` (procedural room or habitat navmesh) gives camera
positions, a ``Renderer`` gives RGB + exact depth, ``croco.data.covisibility`` scores the pair, and
``croco.data.shards.ShardWriter`` stores it. Tasks:

- ``pretrain``: the paper's pairs (reference view at a random navigable point, second view after a random walk
  looking at the reference's mean 3-D point), kept when ``overlap_min <= min(covis12, covis21) <=
  overlap_max``;
- ``depth``: the same pairs with depth maps and per-pixel surface classes (``semantics1``/``semantics2``);
- ``stereo``: rectified pairs (same orientation, right camera ``baseline`` metres along the left camera's x)
  with ``disparity`` = f·B/depth for the left view and ``disparity_valid`` (seen by the right camera);
- ``flow``: small camera motions with ``flow`` (view-1 pixel position in view 2 minus its position) and
  ``flow_valid`` (in frame and not occluded), plus depths and semantics.

Determinism: scene ``i`` is built from ``(seed, i)`` and pair ``g`` draws from its own generator seeded by
``(seed, task, g)``; pair ``g`` belongs to scene ``g // pairs_per_scene`` and to shard ``g //
pairs_per_shard``. So the output is identical however generation is split (``workers``,
``num_jobs``/``job_index``) or resumed (finished shards are kept after checking that they were made with the
same settings).

Speed: a candidate second view is first screened with a depth-only render at ``screen_resolution`` (64² by
default, ~1/16 of the pixels) against the reference's subsampled depth, and only rendered in full when its
screened overlap is within ``screen_margin`` of the accepted range. Screening can only drop a candidate
(rarely one whose exact overlap was just inside the range); the accept/reject decision and the stored
co-visibility always come from the full-resolution depth maps.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from croco.data.cameras import (
    UP,
    NavigableScene,
    SamplingRules,
    intrinsics_from_hfov,
    make_pose,
    mean_valid_point,
    orientation_noise,
    sample_reference_pose,
    sample_second_pose,
)
from croco.data.covisibility import DEFAULT_RTOL, covisibility, optical_flow, visible_in_other
from croco.data.render import CpuRenderer, Renderer, Rendering, SceneUnusable
from croco.data.scenes import SURFACE_CLASSES

TASKS = ("pretrain", "depth", "stereo", "flow")
RENDERERS = ("cpu", "habitat")
_TASK_CODES = {name: code for code, name in enumerate(TASKS)}
PIXEL_CONVENTION = "pixel (row v, col u) has its centre at (u + 0.5, v + 0.5); K principal point W/2, H/2"
GENERATOR_VERSION = 1
"""Bumped when the same settings would produce different pairs (resume refuses to mix versions)."""


# --------------------------------------------------------------------------------------------- statistics


@dataclass
class GenerationStats:
    """Attempt and rejection counts (stored in every shard's attrs and printed at the end)."""

    pairs: int = 0
    reference_attempts: int = 0
    reference_rejected_valid: int = 0
    second_attempts: int = 0
    rejected_degenerate: int = 0
    rejected_not_navigable: int = 0
    rejected_valid: int = 0
    screened_out: int = 0
    rejected_low_overlap: int = 0
    rejected_high_overlap: int = 0
    references_exhausted: int = 0
    scenes_skipped: int = 0

    def add(self, other: GenerationStats) -> None:
        for name in self.as_dict():
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        attempts = max(1, self.second_attempts)
        return (
            f"{self.pairs} pairs from {self.reference_attempts} reference views "
            f"({self.reference_rejected_valid} rejected for valid depth < threshold, "
            f"{self.references_exhausted} abandoned) and {self.second_attempts} second-view attempts "
            f"({self.pairs / attempts:.0%} accepted; rejected: {self.screened_out} by low-res screening, "
            f"{self.rejected_low_overlap} overlap too low, {self.rejected_high_overlap} too high, "
            f"{self.rejected_valid} valid depth, {self.rejected_not_navigable} not navigable, "
            f"{self.scenes_skipped} unusable scenes skipped, "
            f"{self.rejected_degenerate} degenerate look-at)"
        )


# --------------------------------------------------------------------------------------------- pair sampling


@dataclass(frozen=True)
class PairOptions:
    """How pairs are sampled and selected (everything except the scene source and the output)."""

    task: str = "pretrain"
    overlap_min: float = 0.05
    overlap_max: float = 0.95
    rules: SamplingRules = field(default_factory=SamplingRules)
    rtol: float = DEFAULT_RTOL
    max_second_attempts: int = 100
    max_references: int = 50
    screen_resolution: int = 64
    screen_margin: float = 0.02
    stereo_baseline: tuple[float, float] = (0.05, 0.3)
    flow_translation_std: float = 0.25
    flow_rotation_deg: tuple[float, float, float] = (8.0, 4.0, 2.0)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not 0.0 <= self.overlap_min <= self.overlap_max <= 1.0:
            raise ValueError(
                f"overlap range must satisfy 0 <= overlap_min <= overlap_max <= 1, got "
                f"[{self.overlap_min}, {self.overlap_max}]"
            )
        if self.max_second_attempts < 1 or self.max_references < 1:
            raise ValueError("max_second_attempts and max_references must be >= 1")
        if not 0.0 < self.stereo_baseline[0] <= self.stereo_baseline[1]:
            raise ValueError(f"stereo_baseline must be 0 < low <= high, got {self.stereo_baseline}")


@dataclass
class ViewPair:
    """Two rendered views with their cameras and co-visibility (what a shard record is made from)."""

    K: np.ndarray
    pose1: np.ndarray
    pose2: np.ndarray
    view1: Rendering
    view2: Rendering
    covis12: float
    covis21: float
    baseline: float | None = None

    @property
    def overlap(self) -> float:
        return min(self.covis12, self.covis21)


def valid_fraction(depth: np.ndarray) -> float:
    """Fraction of pixels with valid depth (the released generator's check: depth != 0)."""
    return float(np.count_nonzero(depth)) / depth.size


class PairSampler:
    """Samples one accepted ``ViewPair`` of a scene for the configured task.

    ``screen_renderer`` (optional, same scene type, lower resolution) pre-screens second views; pass None to
    render every candidate at full resolution (the habitat backend does).
    """

    def __init__(
        self, renderer: Renderer, options: PairOptions, *, screen_renderer: Renderer | None = None
    ) -> None:
        self.renderer = renderer
        self.options = options
        height, width = renderer.resolution
        self.K = intrinsics_from_hfov(options.rules.hfov_deg, width, height)
        self.screen_renderer = screen_renderer
        self.screen_K = (
            intrinsics_from_hfov(
                options.rules.hfov_deg, screen_renderer.resolution[1], screen_renderer.resolution[0]
            )
            if screen_renderer is not None
            else None
        )

    def sample(self, scene: NavigableScene, rng: np.random.Generator, stats: GenerationStats) -> ViewPair:
        sample = {
            "pretrain": self._sample_covisible,
            "depth": self._sample_covisible,
            "stereo": self._sample_stereo,
            "flow": self._sample_flow,
        }[self.options.task]
        for _ in range(self.options.max_references):
            pair = sample(scene, rng, stats)
            if pair is not None:
                stats.pairs += 1
                return pair
        raise SceneUnusable(
            f"scene {scene.scene_id}: no {self.options.task} pair with overlap in "
            f"[{self.options.overlap_min}, {self.options.overlap_max}] after {self.options.max_references} "
            f"reference views x {self.options.max_second_attempts} attempts ({stats.summary()})"
        )

    def _reference(
        self, scene: NavigableScene, rng: np.random.Generator, stats: GenerationStats
    ) -> tuple[np.ndarray, np.ndarray, Rendering] | None:
        stats.reference_attempts += 1
        nav_point, pose = sample_reference_pose(scene, rng, self.options.rules)
        view = self.renderer.render(scene, self.K, pose)
        if valid_fraction(view.depth) < self.options.rules.min_valid_fraction:
            stats.reference_rejected_valid += 1
            return None
        return nav_point, pose, view

    def _in_range(self, overlap: float, margin: float = 0.0) -> bool:
        return self.options.overlap_min - margin <= overlap <= self.options.overlap_max + margin

    def _score(
        self, view1: Rendering, pose1: np.ndarray, view2: Rendering, pose2: np.ndarray, stats: GenerationStats
    ) -> tuple[float, float] | None:
        """Full-resolution co-visibility, counted as a rejection when out of range."""
        covis12, covis21 = covisibility(
            view1.depth, view2.depth, self.K, self.K, pose1, pose2, rtol=self.options.rtol
        )
        overlap = min(covis12, covis21)
        if overlap < self.options.overlap_min:
            stats.rejected_low_overlap += 1
            return None
        if overlap > self.options.overlap_max:
            stats.rejected_high_overlap += 1
            return None
        return covis12, covis21

    def _second_view(
        self,
        scene: NavigableScene,
        pose1: np.ndarray,
        view1: Rendering,
        screen1: tuple[np.ndarray, np.ndarray] | None,
        pose2: np.ndarray,
        stats: GenerationStats,
    ) -> tuple[Rendering, float, float] | None:
        """Screen (optionally), render and score a candidate second view."""
        if screen1 is not None and self.screen_renderer is not None:
            screen2 = self.screen_renderer.render_depth(scene, self.screen_K, pose2)
            depth1, K1 = screen1
            rough = min(
                covisibility(depth1, screen2, K1, self.screen_K, pose1, pose2, rtol=self.options.rtol)
            )
            if not self._in_range(rough, self.options.screen_margin):
                stats.screened_out += 1
                return None
        view2 = self.renderer.render(scene, self.K, pose2)
        if valid_fraction(view2.depth) < self.options.rules.min_valid_fraction:
            stats.rejected_valid += 1
            return None
        scores = self._score(view1, pose1, view2, pose2, stats)
        if scores is None:
            return None
        return view2, scores[0], scores[1]

    def _screen_reference(self, view1: Rendering) -> tuple[np.ndarray, np.ndarray] | None:
        """(depth, K) of the reference at screening resolution, subsampled from its full-resolution depth."""
        if self.screen_renderer is None:
            return None
        height, width = self.renderer.resolution
        step_y, step_x = (
            height // self.screen_renderer.resolution[0],
            width // self.screen_renderer.resolution[1],
        )
        if step_x < 2 or step_y < 2:
            return None
        return subsample_view(view1.depth, self.K, step_x, step_y)

    def _sample_covisible(
        self, scene: NavigableScene, rng: np.random.Generator, stats: GenerationStats
    ) -> ViewPair | None:
        """The paper's rule: random walk from the reference point, look at the reference's mean 3-D point."""
        reference = self._reference(scene, rng, stats)
        if reference is None:
            return None
        nav1, pose1, view1 = reference
        target = mean_valid_point(view1.depth, self.K, pose1)
        if target is None:  # only possible with min_valid_fraction = 0: nothing to look at
            stats.references_exhausted += 1
            return None

        def propose() -> np.ndarray | None:
            _, pose2 = sample_second_pose(scene, nav1, target, rng, self.options.rules)
            if pose2 is None:
                stats.rejected_degenerate += 1
            return pose2

        return self._first_accepted(scene, pose1, view1, propose, stats)

    def _first_accepted(
        self,
        scene: NavigableScene,
        pose1: np.ndarray,
        view1: Rendering,
        propose: Callable[[], np.ndarray | None],
        stats: GenerationStats,
    ) -> ViewPair | None:
        """Up to ``max_second_attempts`` proposals of a second pose (``propose`` returns None for a rejected one,
        and counts why); the first whose view passes the checks makes the pair."""
        screen1 = self._screen_reference(view1)
        for _ in range(self.options.max_second_attempts):
            stats.second_attempts += 1
            pose2 = propose()
            if pose2 is None:
                continue
            result = self._second_view(scene, pose1, view1, screen1, pose2, stats)
            if result is not None:
                view2, covis12, covis21 = result
                return ViewPair(self.K, pose1, pose2, view1, view2, covis12, covis21)
        stats.references_exhausted += 1
        return None

    def _sample_flow(
        self, scene: NavigableScene, rng: np.random.Generator, stats: GenerationStats
    ) -> ViewPair | None:
        """Small camera motion (a step of flow_translation_std on the floor, a few degrees of rotation)."""
        reference = self._reference(scene, rng, stats)
        if reference is None:
            return None
        nav1, pose1, view1 = reference
        pan, tilt, roll = self.options.flow_rotation_deg
        motion_rules = replace(self.options.rules, pan_deg=pan, tilt_deg=tilt, roll_deg=roll)
        height = float(pose1[1, 3] - nav1[1])
        low, high = self.options.rules.height_range

        def propose() -> np.ndarray | None:
            step = self.options.flow_translation_std * rng.standard_normal(3)
            rotation = pose1[:3, :3] @ orientation_noise(rng, motion_rules)
            nav2 = np.asarray(scene.snap_point(nav1 + np.array([step[0], 0.0, step[2]])), dtype=np.float64)
            if not np.all(np.isfinite(nav2)):
                stats.rejected_not_navigable += 1
                return None
            return make_pose(rotation, nav2 + UP * float(np.clip(height + 0.2 * step[1], low, high)))

        return self._first_accepted(scene, pose1, view1, propose, stats)

    def _sample_stereo(
        self, scene: NavigableScene, rng: np.random.Generator, stats: GenerationStats
    ) -> ViewPair | None:
        """Rectified pair: the right camera shares the orientation, shifted by the baseline along camera x."""
        reference = self._reference(scene, rng, stats)
        if reference is None:
            return None
        nav1, pose1, view1 = reference
        stats.second_attempts += 1
        baseline = float(rng.uniform(*self.options.stereo_baseline))
        shift = baseline * pose1[:3, 0]
        if not scene.is_navigable(nav1 + shift * np.array([1.0, 0.0, 1.0])):
            stats.rejected_not_navigable += 1
            return None
        pose2 = pose1.copy()
        pose2[:3, 3] += shift
        view2 = self.renderer.render(scene, self.K, pose2)
        if valid_fraction(view2.depth) < self.options.rules.min_valid_fraction:
            stats.rejected_valid += 1
            return None
        covis12, covis21 = covisibility(
            view1.depth, view2.depth, self.K, self.K, pose1, pose2, rtol=self.options.rtol
        )
        return ViewPair(self.K, pose1, pose2, view1, view2, covis12, covis21, baseline=baseline)


def subsample_view(
    depth: np.ndarray, K: np.ndarray, step_x: int, step_y: int
) -> tuple[np.ndarray, np.ndarray]:
    """(depth, K) of the camera whose pixels are every ``step``-th pixel of this one (exact, no resampling).

    Pixel j of the subsampled view is pixel o + step·j of the original (o = step // 2), whose centre is at o +
    step·j + 0.5 = step·(u' - 0.5) + o + 0.5 with u' = j + 0.5; hence f' = f / step and c' = (c + step / 2 - o
    - 0.5) / step. Used to screen candidates against the reference without re-rendering it.
    """
    offset_x, offset_y = step_x // 2, step_y // 2
    sub_K = np.asarray(K, dtype=np.float64).copy()
    sub_K[0, :] /= step_x
    sub_K[1, :] /= step_y
    sub_K[0, 2] = (K[0, 2] + step_x / 2 - offset_x - 0.5) / step_x
    sub_K[1, 2] = (K[1, 2] + step_y / 2 - offset_y - 0.5) / step_y
    sub_K[2] = (0.0, 0.0, 1.0)
    return np.ascontiguousarray(depth[offset_y::step_y, offset_x::step_x]), sub_K


def disparity_from_depth(depth: np.ndarray, focal: float, baseline: float) -> np.ndarray:
    """Rectified-stereo disparity f·B/depth in pixels (0 where depth is invalid)."""
    safe = np.where(depth > 0, depth, 1.0)
    return np.where(depth > 0, focal * baseline / safe, 0.0).astype(np.float32)


def pair_record(pair: ViewPair, scene_id: str, task: str, *, with_depth: bool, rtol: float = DEFAULT_RTOL):
    """The shard record of a pair, with the task's ground truth in ``extras``."""
    from croco.data.shards import PairRecord

    extras: dict[str, np.ndarray] = {}
    if task != "pretrain":
        for name, view in (("semantics1", pair.view1), ("semantics2", pair.view2)):
            if view.semantics is not None:
                extras[name] = view.semantics
    if task == "stereo":
        assert pair.baseline is not None
        extras["disparity"] = disparity_from_depth(pair.view1.depth, float(pair.K[0, 0]), pair.baseline)
        extras["disparity_valid"] = visible_in_other(
            pair.view1.depth, pair.view2.depth, pair.K, pair.K, pair.pose1, pair.pose2, rtol=rtol
        )
    elif task == "flow":
        flow, valid = optical_flow(
            pair.view1.depth, pair.view2.depth, pair.K, pair.K, pair.pose1, pair.pose2, rtol=rtol
        )
        extras["flow"] = flow
        extras["flow_valid"] = valid
    keep_depth = with_depth or task != "pretrain"
    return PairRecord(
        image1=pair.view1.rgb,
        image2=pair.view2.rgb,
        K1=pair.K,
        K2=pair.K,
        pose1=pair.pose1,
        pose2=pair.pose2,
        covis12=pair.covis12,
        covis21=pair.covis21,
        scene=scene_id,
        depth1=pair.view1.depth if keep_depth else None,
        depth2=pair.view2.depth if keep_depth else None,
        extras=extras,
    )


def pair_rng(seed: int, task: str, pair_index: int) -> np.random.Generator:
    """The generator of global pair ``pair_index`` (independent of other pairs and of the shard layout)."""
    return np.random.default_rng([int(seed), 0xA1B2, _TASK_CODES[task], int(pair_index)])


# --------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that determines the content of the shards (compared on resume)."""

    seed: int = 0
    resolution: int = 256
    pairs_per_scene: int = 25
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
            "generator": "croco.data.generate",
            "generator_version": GENERATOR_VERSION,
            "task": options.task,
            "seed": self.seed,
            "renderer": self.renderer,
            "pairs_per_scene": self.pairs_per_scene,
            "overlap_min": float(options.overlap_min),
            "overlap_max": float(options.overlap_max),
            "covisibility_rtol": float(options.rtol),
            # every other option that changes which pairs come out (and how they are encoded)
            "pair_options": {k: v for k, v in dataclasses.asdict(options).items()
                             if k not in ("task", "overlap_min", "overlap_max", "rtol", "rules")},
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
            renderer: Renderer = CpuRenderer(size, size, semantics=config.options.task != "pretrain")
            screen_size = config.options.screen_resolution
            screen = (
                CpuRenderer(screen_size, screen_size, semantics=False) if 0 < screen_size < size else None
            )
        else:
            from croco.data.habitat import HabitatRenderer

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
        from croco.data.scenes import build_synthetic_scene

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
        f"pair {pair_index}: {MAX_SCENE_FALLBACKS} scenes in a row gave no pair; check the scene source and the "
        f"overlap range [{config.options.overlap_min}, {config.options.overlap_max}]"
    )


def write_shard(job: ShardJob, on_pair: Callable[[], None] | None = None) -> tuple[str, dict[str, int]]:
    """Generate and write one shard (atomically); returns (path, stats). Runs in a worker or in-process."""
    from croco.data.shards import ShardWriter

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


def _pool_write_shard(job: ShardJob) -> tuple[str, dict[str, int]]:
    def tick() -> None:
        with _PROGRESS.get_lock():
            _PROGRESS.value += 1

    return write_shard(job, tick)


def _check_existing(path: Path, config: GeneratorConfig, job: ShardJob) -> None:
    """A finished shard is kept only if it was made with the same settings; otherwise a one-line error."""
    from croco.data.shards import ShardReader

    reader = ShardReader(path)
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
    pairs_per_scene: int = 25,
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
) -> list[Path]:
    """Generate ``pairs`` pairs into ``out_dir/shard-00000.h5 ...`` and return this job's shard paths.

    Deterministic for a seed; resumable (finished shards are checked and kept, stale temporary files of this
    job's shards removed). ``workers`` > 1 writes shards in that many processes; ``num_jobs``/``job_index``
    split the shards into contiguous blocks so that cluster jobs write disjoint files of the same dataset.
    ``renderer='habitat'`` renders the ``habitat_scenes`` files (``pairs_per_scene`` pairs per scene, cycling)
    with habitat-sim. ``depth`` stores depth maps for ``pretrain`` (other tasks always do).
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
        from croco.data.habitat import require_habitat

        require_habitat()
        habitat_scenes = expand_scene_paths(habitat_scenes)
    options = PairOptions(
        task=task,
        overlap_min=float(overlap_min),
        overlap_max=float(overlap_max),
        rules=SamplingRules(hfov_deg=float(hfov_deg)),
        max_second_attempts=int(max_second_attempts),
        screen_resolution=int(screen_resolution) if renderer == "cpu" else 0,
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
    out.mkdir(parents=True, exist_ok=True)
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
    pending: list[ShardJob] = []
    stale = 0
    for job in jobs:
        path = Path(job.path)
        if path.exists():
            _check_existing(path, config, job)
            continue
        for leftover in path.parent.glob(path.name + ".tmp-*"):
            leftover.unlink(missing_ok=True)
            stale += 1
        pending.append(job)
    kept = len(jobs) - len(pending)
    todo = sum(job.count for job in pending)
    print(
        f"[generate] {out}: {len(jobs)} shard(s) in this job, {kept} finished and kept, "
        f"{len(pending)} to write "
        f"({todo} pairs, task={task}, renderer={renderer}, {resolution}x{resolution})"
        + (f"; removed {stale} stale temporary file(s)" if stale else ""),
        flush=True,
    )
    if pending:
        totals, seconds = _run_jobs(pending, todo, workers, progress)
        print(
            f"[generate] {todo} pairs in {seconds:.1f} s: {todo / max(seconds, 1e-9):.1f} pairs/s; "
            f"{totals.summary()}",
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
            with context.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(counter,)) as pool:
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
