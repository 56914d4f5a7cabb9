"""Pair sampling: CroCo's rules for choosing two views of a scene, their co-visibility and task ground truth.

Tasks:

- ``pretrain``: the paper's pairs (reference view at a random navigable point, second view after a random walk
  looking at the reference's mean 3-D point), kept when ``overlap_min <= min(covis12, covis21) <=
  overlap_max``;
- ``depth``: the same pairs with depth maps and per-pixel surface classes (``semantics1``/``semantics2``);
- ``stereo``: rectified pairs (same orientation, right camera ``baseline`` metres along the left camera's x)
  with ``disparity`` = f·B/depth for the left view and ``disparity_valid`` (seen by the right camera);
- ``flow``: small camera motions with ``flow`` (view-1 pixel position in view 2 minus its position) and
  ``flow_valid`` (in frame and not occluded), plus depths and semantics.

Every task starts the same way (a reference view that passes the valid-depth and structure checks,
``PairSampler._reference``) and differs in how the second camera is chosen.

Structure: a view whose pixels are almost all bare room (floor, wall, ceiling: ``BARE_CLASSES``) gives
cross-view completion nothing to match, so reference and second views need at least ``min_structure`` (default
0.25) of their pixels on furniture, pictures, doors, windows, plants, rugs or clutter. The classes come from
the renderer's semantics (one gather of the face ids it finds anyway); renderers without semantics
(habitat-sim here) skip the check. Rejections are counted (``reference_rejected_structure``,
``rejected_structure``).

Appearance: ``exposure_std``, ``white_balance_std`` and ``noise_std`` (default 0: off) give each view of a
pair its own exposure (log2 stops), per-channel gains and sensor noise, as two real photographs differ;
``specular`` turns on the renderer's view-dependent highlight. The random numbers come from a child of the
pair's generator (``Generator.spawn``), so switching them on changes the colours only, never which pair is
sampled.

Speed: a candidate second view is first screened with a depth-only render at ``screen_resolution`` (64² by
default, ~1/16 of the pixels) against the reference's subsampled depth, and only rendered in full when its
screened overlap (and structure) is within ``screen_margin`` of the accepted range; reference views are
screened for structure the same way. Screening can only drop a candidate (rarely one whose exact overlap was
just inside the range); the accept/reject decision and the stored co-visibility always come from the
full-resolution depth maps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from croco.data.shards import PairRecord
from croco.geometry.cameras import UP, intrinsics_from_hfov, make_pose, mean_valid_point
from croco.geometry.covisibility import (
    DEFAULT_RTOL,
    covisibility,
    disparity_from_depth,
    optical_flow,
    visible_in_other,
)
from croco.synth.render import Renderer, Rendering, SceneUnusable
from croco.synth.scene import BARE_CLASS_IDS
from croco.synth.viewpoints import (
    NavigableScene,
    SamplingRules,
    orientation_noise,
    sample_reference_pose,
    sample_second_pose,
)

TASKS = ("pretrain", "depth", "stereo", "flow")
_TASK_CODES = {name: code for code, name in enumerate(TASKS)}


# --------------------------------------------------------------------------------------------- statistics


@dataclass
class GenerationStats:
    """Attempt and rejection counts (stored in every shard's attrs and printed at the end)."""

    pairs: int = 0
    reference_attempts: int = 0
    reference_rejected_valid: int = 0
    reference_rejected_structure: int = 0
    second_attempts: int = 0
    rejected_degenerate: int = 0
    rejected_not_navigable: int = 0
    rejected_valid: int = 0
    rejected_structure: int = 0
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
            f"{self.reference_rejected_structure} for structure < min_structure, "
            f"{self.references_exhausted} abandoned) and {self.second_attempts} second-view attempts "
            f"({self.pairs / attempts:.0%} accepted; rejected: {self.screened_out} by low-res screening, "
            f"{self.rejected_low_overlap} overlap too low, {self.rejected_high_overlap} too high, "
            f"{self.rejected_structure} structure, "
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
    min_structure: float = 0.25
    """Smallest share of a view's pixels on non-bare classes (0: no check; needs renderer semantics)."""
    exposure_std: float = 0.0
    """Per-view exposure change, std in stops (log2); 0: off."""
    white_balance_std: float = 0.0
    """Per-view, per-channel relative gain std; 0: off."""
    noise_std: float = 0.0
    """Per-view Gaussian sensor noise, std in grey levels; 0: off."""
    specular: float = 0.0
    """Strength of the CPU renderer's view-dependent highlight (times each material's gloss); 0: off."""

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
        if not 0.0 <= self.min_structure <= 1.0:
            raise ValueError(f"min_structure must be in [0, 1], got {self.min_structure}")
        for name in ("exposure_std", "white_balance_std", "noise_std", "specular"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def photometric(self) -> bool:
        """Whether views get their own exposure, white balance or noise."""
        return self.exposure_std > 0 or self.white_balance_std > 0 or self.noise_std > 0


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


_BARE = np.zeros(256, dtype=bool)
_BARE[BARE_CLASS_IDS] = True


def structure_fraction(semantics: np.ndarray) -> float:
    """Fraction of pixels whose class is not bare room (``croco.synth.scene.BARE_CLASSES``)."""
    return 1.0 - float(np.count_nonzero(np.take(_BARE, semantics))) / semantics.size


def photometric(
    rgb: np.ndarray, rng: np.random.Generator, exposure_std: float, white_balance_std: float, noise_std: float
) -> np.ndarray:
    """A view as another exposure and white balance of the same camera would record it, plus sensor noise.

    The CPU renderer's tone curve is v = 255 (1 - exp(-k x)); a gain g on the radiance x maps 1 - v / 255 to
    (1 - v / 255)^g, so the change is exact on its images up to 8-bit rounding (saturated pixels stay white).
    """
    gain = 2.0 ** rng.normal(0.0, exposure_std) * np.maximum(1.0 + rng.normal(0.0, white_balance_std, 3), 0.5)
    remaining = np.clip(1.0 - rgb.astype(np.float32) / np.float32(255.0), 0.0, 1.0)
    out = np.float32(255.0) * (np.float32(1.0) - remaining ** gain.astype(np.float32))
    if noise_std > 0:
        out += rng.normal(0.0, noise_std, size=out.shape).astype(np.float32)
    return np.clip(out + np.float32(0.5), 0, 255).astype(np.uint8)


class Reference(NamedTuple):
    """The first view of a pair: its navigable floor point, camera pose and rendering."""

    nav: np.ndarray
    pose: np.ndarray
    view: Rendering


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
        # a child generator: appearance draws never shift the geometry draws of the pair generator
        appearance = rng.spawn(1)[0] if self.options.photometric else None
        second = {
            "pretrain": self._covisible_second,
            "depth": self._covisible_second,
            "stereo": self._stereo_second,
            "flow": self._flow_second,
        }[self.options.task]
        for _ in range(self.options.max_references):
            reference = self._reference(scene, rng, stats)
            pair = None if reference is None else second(scene, rng, stats, reference)
            if pair is not None:
                stats.pairs += 1
                return pair if appearance is None else self._restyle(pair, appearance)
        raise SceneUnusable(
            f"scene {scene.scene_id}: no {self.options.task} pair with overlap in "
            f"[{self.options.overlap_min}, {self.options.overlap_max}] after {self.options.max_references} "
            f"reference views x {self.options.max_second_attempts} attempts ({stats.summary()})"
        )

    def _restyle(self, pair: ViewPair, rng: np.random.Generator) -> ViewPair:
        """The pair with each view's own exposure, white balance and noise (``photometric``)."""
        options = self.options
        views = [
            view._replace(
                rgb=photometric(
                    view.rgb, rng, options.exposure_std, options.white_balance_std, options.noise_std
                )
            )
            for view in (pair.view1, pair.view2)
        ]
        return replace(pair, view1=views[0], view2=views[1])

    def _has_structure(self, semantics: np.ndarray | None, margin: float = 0.0) -> bool:
        """Whether a view has ``min_structure`` of non-bare pixels (always without semantics or minimum)."""
        if self.options.min_structure <= 0 or semantics is None:
            return True
        return structure_fraction(semantics) >= self.options.min_structure - margin

    def _reference(
        self, scene: NavigableScene, rng: np.random.Generator, stats: GenerationStats
    ) -> Reference | None:
        stats.reference_attempts += 1
        nav_point, pose = sample_reference_pose(scene, rng, self.options.rules)
        if self.screen_renderer is not None and self.options.min_structure > 0:
            _, classes = self.screen_renderer.render_geometry(scene, self.screen_K, pose)
            if not self._has_structure(classes, self.options.screen_margin):
                stats.reference_rejected_structure += 1
                return None
        view = self.renderer.render(scene, self.K, pose)
        if valid_fraction(view.depth) < self.options.rules.min_valid_fraction:
            stats.reference_rejected_valid += 1
            return None
        if not self._has_structure(view.semantics):
            stats.reference_rejected_structure += 1
            return None
        return Reference(nav_point, pose, view)

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
            if self.options.min_structure > 0:
                screen2, classes2 = self.screen_renderer.render_geometry(scene, self.screen_K, pose2)
            else:
                screen2, classes2 = self.screen_renderer.render_depth(scene, self.screen_K, pose2), None
            depth1, K1 = screen1
            rough = min(
                covisibility(depth1, screen2, K1, self.screen_K, pose1, pose2, rtol=self.options.rtol)
            )
            if not self._in_range(rough, self.options.screen_margin):
                stats.screened_out += 1
                return None
            if not self._has_structure(classes2, self.options.screen_margin):
                stats.rejected_structure += 1
                return None
        view2 = self.renderer.render(scene, self.K, pose2)
        if valid_fraction(view2.depth) < self.options.rules.min_valid_fraction:
            stats.rejected_valid += 1
            return None
        if not self._has_structure(view2.semantics):
            stats.rejected_structure += 1
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

    def _covisible_second(
        self, scene: NavigableScene, rng: np.random.Generator, stats: GenerationStats, ref: Reference
    ) -> ViewPair | None:
        """The paper's rule: random walk from the reference point, look at the reference's mean 3-D point."""
        nav1, pose1, view1 = ref
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
        """Up to ``max_second_attempts`` proposals of a second pose (``propose`` returns None for a rejected
        one, and counts why); the first whose view passes the checks makes the pair."""
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

    def _flow_second(
        self, scene: NavigableScene, rng: np.random.Generator, stats: GenerationStats, ref: Reference
    ) -> ViewPair | None:
        """Small camera motion (a step of flow_translation_std on the floor, a few degrees of rotation)."""
        nav1, pose1, view1 = ref
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

    def _stereo_second(
        self, scene: NavigableScene, rng: np.random.Generator, stats: GenerationStats, ref: Reference
    ) -> ViewPair | None:
        """Rectified pair: the right camera shares the orientation, shifted by the baseline along camera x."""
        nav1, pose1, view1 = ref
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


def pair_record(pair: ViewPair, scene_id: str, task: str, *, with_depth: bool, rtol: float = DEFAULT_RTOL):
    """The shard record of a pair, with the task's ground truth in ``extras``."""
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
