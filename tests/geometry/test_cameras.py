"""Camera conventions and the paper's view-sampling rules (naver/croco ``datasets/habitat_sim/``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from croco.geometry.cameras import (
    UP,
    camera_rays,
    heading_rotation,
    intrinsics_from_hfov,
    look_at,
    mean_valid_point,
    unproject_depth,
)
from croco.synth.scene import simple_scene
from croco.synth.viewpoints import (
    SamplingRules,
    orientation_noise,
    random_walk,
    sample_reference_pose,
    sample_second_pose,
)


class OpenFloor:
    """A NavigableScene without obstacles: the walkable area is the square [0, side]^2 (snap = clamp)."""

    scene_id = "open-floor"

    def __init__(self, side: float = 1e6, snap_nan: bool = False) -> None:
        self.side = side
        self.snap_nan = snap_nan
        self.snaps: list[np.ndarray] = []

    def sample_navigable_point(self, rng: np.random.Generator) -> np.ndarray:
        x, z = rng.uniform(0, self.side, size=2)
        return np.array([x, 0.0, z])

    def snap_point(self, point: np.ndarray) -> np.ndarray:
        self.snaps.append(np.asarray(point, dtype=np.float64).copy())
        if self.snap_nan:
            return np.full(3, np.nan)
        return np.array([np.clip(point[0], 0, self.side), 0.0, np.clip(point[2], 0, self.side)])

    def is_navigable(self, point: np.ndarray) -> bool:
        return bool(0 <= point[0] <= self.side and 0 <= point[2] <= self.side)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cosine = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(np.clip(cosine, -1.0, 1.0)))


def test_intrinsics_from_hfov_matches_the_released_formula():
    K = intrinsics_from_hfov(60.0, 256)
    assert K[0, 0] == pytest.approx(128.0 / math.tan(math.radians(30.0)))
    assert K[1, 1] == K[0, 0]
    assert (K[0, 2], K[1, 2]) == (128.0, 128.0)
    wide = intrinsics_from_hfov(90.0, 320, 240)
    assert wide[0, 0] == pytest.approx(160.0) and (wide[0, 2], wide[1, 2]) == (160.0, 120.0)
    with pytest.raises(ValueError, match="hfov"):
        intrinsics_from_hfov(180.0, 256)


def test_camera_rays_project_back_to_pixel_centres():
    K = intrinsics_from_hfov(60.0, 8, 6)
    rays = camera_rays(K, 6, 8)
    assert rays.shape == (6, 8, 3) and np.all(rays[..., 2] == 1.0)
    projected = rays @ K.T
    u = projected[..., 0] / projected[..., 2]
    v = projected[..., 1] / projected[..., 2]
    np.testing.assert_allclose(u, np.arange(8)[None, :] + 0.5 + 0 * u, atol=1e-5)
    np.testing.assert_allclose(v, np.arange(6)[:, None] + 0.5 + 0 * v, atol=1e-5)


def test_look_at_builds_opencv_axes():
    eye, target = np.array([1.0, 1.5, 2.0]), np.array([4.0, 0.5, 6.0])
    rotation = look_at(eye, target)
    assert rotation is not None
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    forward = (target - eye) / np.linalg.norm(target - eye)
    np.testing.assert_allclose(rotation[:, 2], forward, atol=1e-12)
    assert abs(rotation[1, 0]) < 1e-12  # image x (right) is level: no roll
    assert rotation[1, 1] < 0  # image y points down in the world
    # the right axis is on the right: a point to the camera's right projects to u > cx
    right_point = eye + forward + 0.1 * rotation[:, 0]
    camera = rotation.T @ (right_point - eye)
    assert camera[0] > 0
    assert look_at(eye, eye + UP) is None  # looking straight up: roll undefined


def test_heading_rotation_is_level_and_points_along_heading():
    for heading in np.linspace(0, 2 * math.pi, 7):
        rotation = heading_rotation(heading)
        np.testing.assert_allclose(rotation[:, 2], [math.sin(heading), 0.0, math.cos(heading)], atol=1e-12)
        np.testing.assert_allclose(rotation[:, 1], [0.0, -1.0, 0.0], atol=1e-12)


def test_orientation_noise_stays_within_pan_tilt_roll_bounds_and_uses_them():
    rules = SamplingRules()
    rng = np.random.default_rng(0)
    tilts, pans, rolls = [], [], []
    for _ in range(2000):
        noise = orientation_noise(rng, rules)
        forward = noise[:, 2]  # camera-frame direction of the new optical axis
        tilts.append(math.degrees(math.asin(np.clip(-forward[1], -1, 1))))
        pans.append(math.degrees(math.atan2(forward[0], forward[2])))
        rolls.append(math.degrees(math.atan2(noise[1, 0], noise[0, 0])))
    tilts, pans = np.abs(tilts), np.abs(pans)
    assert tilts.max() <= 10.0 + 1e-6 and tilts.max() > 9.5
    # pan is applied before tilt, so its apparent size grows slightly with tilt; still ~3 degrees
    assert pans.max() <= 3.05 and pans.max() > 2.8
    assert np.abs(rolls).max() <= 5.6 and np.abs(rolls).max() > 4.5


def test_reference_pose_follows_height_and_noise_rules():
    scene = OpenFloor(side=20.0)
    rules = SamplingRules()
    rng = np.random.default_rng(1)
    for _ in range(200):
        nav, pose = sample_reference_pose(scene, rng, rules)
        assert scene.is_navigable(nav)
        height = pose[1, 3] - nav[1]
        assert 1.2 <= height <= 1.8
        np.testing.assert_allclose(pose[[0, 2], 3], nav[[0, 2]])
        rotation = pose[:3, :3]
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)
        # a level camera plus at most 10 deg tilt and 5 deg roll: image-down stays within ~11.2 deg of -UP
        assert (
            angle_deg(rotation[:, 1], -UP)
            <= math.degrees(math.acos(math.cos(math.radians(10)) * math.cos(math.radians(5)))) + 1e-6
        )


def test_random_walk_takes_five_gaussian_steps_of_std_two():
    rules = SamplingRules()
    rng = np.random.default_rng(2)
    scene = OpenFloor()
    start = np.array([5e5, 0.0, 5e5])
    ends = np.array([random_walk(scene, start, rng, rules) for _ in range(4000)])
    assert len(scene.snaps) == 5 * 4000  # every step is snapped to the walkable area
    displacement = ends - start
    assert np.all(displacement[:, 1] == 0.0)
    # sum of 5 steps of 2.0 * N(0, 1): variance 5 * 4 = 20 per floor axis
    assert np.var(displacement[:, 0]) == pytest.approx(20.0, rel=0.08)
    assert np.var(displacement[:, 2]) == pytest.approx(20.0, rel=0.08)
    assert abs(np.mean(displacement[:, 0])) < 0.3


def test_random_walk_ignores_failed_snaps():
    scene = OpenFloor(snap_nan=True)
    start = np.array([1.0, 0.0, 2.0])
    end = random_walk(scene, start, np.random.default_rng(3), SamplingRules())
    np.testing.assert_array_equal(end, start)


def test_second_view_looks_at_the_target_up_to_the_noise():
    scene = OpenFloor(side=10.0)
    target = np.array([5.0, 1.0, 5.0])
    exact = SamplingRules(pan_deg=0.0, tilt_deg=0.0, roll_deg=0.0)
    rng = np.random.default_rng(4)
    for rules, bound in ((exact, 1e-4), (SamplingRules(), math.hypot(3.0, 10.0) + 1e-4)):
        for _ in range(100):
            _, pose = sample_second_pose(scene, np.array([2.0, 0.0, 2.0]), target, rng, rules)
            assert pose is not None
            assert angle_deg(pose[:3, 2], target - pose[:3, 3]) <= bound


def test_sampling_is_deterministic_for_a_seed():
    scene = simple_scene((6.0, 2.8, 5.0), [((3.0, 0.5, 2.5), (0.6, 0.5, 0.4), 0.4)])
    rules = SamplingRules()

    def draw(seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        nav, pose = sample_reference_pose(scene, rng, rules)
        _, second = sample_second_pose(scene, nav, np.array([3.0, 1.0, 2.5]), rng, rules)
        return [pose, second]

    for a, b in zip(draw(7), draw(7)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(draw(7)[0], draw(8)[0])


def test_unprojection_and_mean_point_of_a_wall():
    K = intrinsics_from_hfov(60.0, 32)
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    depth = np.full((32, 32), 4.0, dtype=np.float32)
    points = unproject_depth(depth, K, pose)
    np.testing.assert_allclose(points[..., 2], 7.0)  # the plane z_cam = 4 in the world
    np.testing.assert_allclose(mean_valid_point(depth, K, pose), [1.0, 2.0, 7.0], atol=1e-9)
    depth[:, :16] = 0.0  # invalid pixels are ignored
    assert mean_valid_point(depth, K, pose)[0] > 1.0
    assert mean_valid_point(np.zeros((4, 4)), K, pose) is None
