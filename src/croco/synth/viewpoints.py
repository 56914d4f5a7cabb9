"""Where the cameras of a pair go: CroCo's view-sampling rules for Habitat-style navigable scenes.

The rules (the released generator of the official repository, naver/croco `datasets/habitat_sim/`): reference
view at a random navigable point, camera height U[1.2, 1.8] m, heading uniform in [0, 2π), then pan U[±3°]
(about up) · tilt U[±10°] (about right) · roll U[±5°] (about forward); the second view does a 5-step random
walk of 2.0·N(0, 1) in the floor plane, snapping every step to the walkable area, and looks at the mean 3-D
point of the reference view (up = world up) with the same orientation noise. The scene side of this
(``NavigableScene``) is what a navmesh offers, so the same code drives the procedural rooms and habitat-sim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from croco.geometry.cameras import UP, axis_angle, heading_rotation, look_at, make_pose


@dataclass(frozen=True)
class SamplingRules:
    """The numbers of the paper's camera sampling (defaults = the released generator)."""

    hfov_deg: float = 60.0
    height_range: tuple[float, float] = (1.2, 1.8)
    pan_deg: float = 3.0
    tilt_deg: float = 10.0
    roll_deg: float = 5.0
    walk_steps: int = 5
    walk_step_std: float = 2.0
    min_valid_fraction: float = 0.7

    def __post_init__(self) -> None:
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"hfov_deg must be in (0, 180), got {self.hfov_deg}")
        low, high = self.height_range
        if not 0.0 < low <= high:
            raise ValueError(f"height_range must satisfy 0 < low <= high, got {self.height_range}")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction must be in [0, 1], got {self.min_valid_fraction}")


@runtime_checkable
class NavigableScene(Protocol):
    """What camera sampling needs from a scene: a navmesh (or its procedural stand-in).

    Points are (3,) float arrays in world coordinates on the walkable floor (y = floor height).
    """

    scene_id: str

    def sample_navigable_point(self, rng: np.random.Generator) -> np.ndarray:
        """A random point of the walkable area."""

    def snap_point(self, point: np.ndarray) -> np.ndarray:
        """The walkable point nearest to ``point`` (NaNs when there is none)."""

    def is_navigable(self, point: np.ndarray) -> bool:
        """Whether ``point`` (its floor-plane projection) is walkable."""


# --------------------------------------------------------------------------------------------- intrinsics


def orientation_noise(rng: np.random.Generator, rules: SamplingRules) -> np.ndarray:
    """Camera-frame rotation pan · tilt · roll with uniform angles (pan about camera up = -y, tilt about right
    = x, roll about forward = z), composed on the right of a camera-to-world rotation."""
    pan = math.radians(rng.uniform(-rules.pan_deg, rules.pan_deg))
    tilt = math.radians(rng.uniform(-rules.tilt_deg, rules.tilt_deg))
    roll = math.radians(rng.uniform(-rules.roll_deg, rules.roll_deg))
    return (
        axis_angle(np.array([0.0, -1.0, 0.0]), pan)
        @ axis_angle(np.array([1.0, 0.0, 0.0]), tilt)
        @ axis_angle(np.array([0.0, 0.0, 1.0]), roll)
    )


def camera_centre(nav_point: np.ndarray, rng: np.random.Generator, rules: SamplingRules) -> np.ndarray:
    """Camera centre at a height U[height_range] above a navigable floor point."""
    return np.asarray(nav_point, dtype=np.float64) + UP * rng.uniform(*rules.height_range)


def sample_reference_pose(
    scene: NavigableScene, rng: np.random.Generator, rules: SamplingRules
) -> tuple[np.ndarray, np.ndarray]:
    """(navigable point, pose) of a reference view: random point, random heading, orientation noise."""
    nav_point = np.asarray(scene.sample_navigable_point(rng), dtype=np.float64)
    centre = camera_centre(nav_point, rng, rules)
    heading = rng.uniform(0.0, 2.0 * math.pi)
    rotation = heading_rotation(heading) @ orientation_noise(rng, rules)
    return nav_point, make_pose(rotation, centre)


def random_walk(
    scene: NavigableScene, start: np.ndarray, rng: np.random.Generator, rules: SamplingRules
) -> np.ndarray:
    """``walk_steps`` steps of ``walk_step_std``·N(0, 1) in x and z, each snapped to the walkable area.

    A snap that fails (NaN, no walkable point) is ignored, as in the released generator: the walker stays.
    """
    point = np.asarray(start, dtype=np.float64).copy()
    for _ in range(rules.walk_steps):
        step = rules.walk_step_std * rng.standard_normal(2)
        candidate = point + np.array([step[0], 0.0, step[1]])
        snapped = np.asarray(scene.snap_point(candidate), dtype=np.float64)
        if np.all(np.isfinite(snapped)):
            point = snapped
    return point


def sample_second_pose(
    scene: NavigableScene,
    reference_point: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    rules: SamplingRules,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(navigable point, pose or None) of a second view: random walk, then look at ``target`` plus noise.

    The pose is None when the camera would look straight up or down at the target (undefined roll); the caller
    counts that as a rejected attempt. The random numbers drawn do not depend on that outcome.
    """
    nav_point = random_walk(scene, reference_point, rng, rules)
    centre = camera_centre(nav_point, rng, rules)
    noise = orientation_noise(rng, rules)
    rotation = look_at(centre, target)
    if rotation is None:
        return nav_point, None
    return nav_point, make_pose(rotation @ noise, centre)
