"""Co-visibility against closed forms (a camera facing a plane) and an independent occlusion test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from croco.geometry.cameras import camera_rays, intrinsics_from_hfov, look_at, make_pose
from croco.geometry.covisibility import covisibility, optical_flow, reproject, visible_in_other
from croco.synth.render import CpuRenderer
from croco.synth.scene import simple_scene

W = 64
K = intrinsics_from_hfov(60.0, W)
F = K[0, 0]


def translated(x: float = 0.0, y: float = 0.0, z: float = 0.0) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 3] = [x, y, z]
    return pose


@pytest.mark.parametrize("baseline", [0.1, 0.5, 1.3, 2.0])
def test_sideways_translation_in_front_of_a_plane_matches_closed_form(baseline):
    distance = 4.0
    depth = np.full((W, W), distance, dtype=np.float32)  # fronto-parallel plane, seen by both cameras
    covis12, covis21 = covisibility(depth, depth, K, K, translated(), translated(x=baseline))
    shift = F * baseline / distance  # image shift in pixels
    closed_form = 1.0 - shift / W
    assert covis12 == pytest.approx(closed_form, abs=1.0 / W)
    assert covis21 == pytest.approx(closed_form, abs=1.0 / W)
    # exact count with pixel centres at +0.5: columns j with j + 0.5 - shift >= 0
    assert covis12 == pytest.approx((W - max(0, math.ceil(shift - 0.5))) / W, abs=1e-9)


def test_moving_back_sees_all_of_view_one_and_a_quadratically_larger_area():
    distance, back = 3.0, 1.5
    depth1 = np.full((W, W), distance, dtype=np.float32)
    depth2 = np.full((W, W), distance + back, dtype=np.float32)
    covis12, covis21 = covisibility(depth1, depth2, K, K, translated(), translated(z=-back))
    assert covis12 == 1.0
    assert covis21 == pytest.approx((distance / (distance + back)) ** 2, abs=2.0 / W)


def test_directions_are_symmetric_and_invalid_depth_is_never_visible():
    rng = np.random.default_rng(0)
    depth = np.full((W, W), 5.0, dtype=np.float32)
    holes = depth.copy()
    holes[rng.random((W, W)) < 0.3] = 0.0
    pose2 = translated(x=0.7, z=0.4)
    forward = covisibility(holes, depth, K, K, translated(), pose2)
    backward = covisibility(depth, holes, K, K, pose2, translated())
    assert forward == pytest.approx(backward[::-1])
    mask = visible_in_other(holes, depth, K, K, translated(), pose2)
    assert not np.any(mask[holes == 0])
    assert forward[0] == pytest.approx(mask.mean())  # the denominator is every pixel, as in the released code


def test_depth_disagreement_means_occluded():
    depth1 = np.full((W, W), 4.0, dtype=np.float32)
    depth2 = depth1.copy()
    depth2[:, : W // 2] = 2.0  # something much nearer hides the left half in view 2
    mask = visible_in_other(depth1, depth2, K, K, translated(), translated())
    assert not mask[:, : W // 2 - 1].any() and mask[:, W // 2 + 1 :].all()
    tolerated = depth1 * 1.03  # within the 5 % relative tolerance: same surface
    assert visible_in_other(depth1, tolerated, K, K, translated(), translated()).all()


def _slab(origin: np.ndarray, directions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Entry parameter of rays into an axis-aligned box (inf for a miss): an independent slab test."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (low - origin) / directions
        t2 = (high - origin) / directions
    t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.where((t_near <= t_far) & (t_far > 0), t_near, np.inf)


def test_occluder_matches_an_independent_geometric_visibility_computation():
    # A tall room so that both cameras see only the far wall (z = 6) and a box floating in front of it.
    room = (12.0, 8.0, 6.0)
    centre, half = np.array([6.8, 4.0, 3.5]), np.array([0.5, 0.4, 0.1])
    scene = simple_scene(room, [(tuple(centre), tuple(half), 0.0)])
    empty = simple_scene(room)
    eye1, eye2 = np.array([6.0, 4.0, 1.0]), np.array([7.2, 4.1, 1.3])
    pose1 = make_pose(look_at(eye1, eye1 + [0.0, 0.0, 1.0]), eye1)
    pose2 = make_pose(look_at(eye2, eye2 + [0.1, 0.0, 1.0]), eye2)
    renderer = CpuRenderer(W, semantics=False)
    view1, view2 = renderer.render(scene, K, pose1), renderer.render(scene, K, pose2)

    # Independent: the surface point of each view-1 pixel by ray casting (wall plane or box), then visible
    # from camera 2 iff it projects inside view 2 and the segment camera 2 -> point misses the box.
    directions = camera_rays(K, W, W).reshape(-1, 3) @ pose1[:3, :3].T
    t_wall = (room[2] - eye1[2]) / directions[:, 2]
    t_box = _slab(eye1, directions, centre - half, centre + half)
    points = eye1 + directions * np.minimum(t_wall, t_box)[:, None]
    to_points = points - eye2
    camera2 = to_points @ pose2[:3, :3]
    u = K[0, 0] * camera2[:, 0] / camera2[:, 2] + K[0, 2]
    v = K[1, 1] * camera2[:, 1] / camera2[:, 2] + K[1, 2]
    in_frame = (camera2[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < W)
    blocked = _slab(eye2, to_points, centre - half, centre + half) < 1.0 - 1e-4
    expected = (in_frame & ~blocked).reshape(W, W)

    mask = visible_in_other(view1.depth, view2.depth, K, K, pose1, pose2)
    assert (mask == expected).mean() > 0.98  # disagreements only along the box outline
    covis12, _ = covisibility(view1.depth, view2.depth, K, K, pose1, pose2)
    assert covis12 == pytest.approx(expected.mean(), abs=0.015)

    # The occluder really costs co-visibility (same cameras, empty room).
    free1, free2 = renderer.render(empty, K, pose1), renderer.render(empty, K, pose2)
    assert covisibility(free1.depth, free2.depth, K, K, pose1, pose2)[0] > covis12 + 0.03


def test_flow_of_a_sideways_move_is_a_uniform_shift():
    distance, baseline = 4.0, 0.5
    depth = np.full((W, W), distance, dtype=np.float32)
    flow, valid = optical_flow(depth, depth, K, K, translated(), translated(x=baseline))
    shift = F * baseline / distance
    np.testing.assert_allclose(
        flow[..., 0], -shift, atol=1e-3
    )  # the camera moves right: the image moves left
    np.testing.assert_allclose(flow[..., 1], 0.0, atol=1e-3)
    columns = np.arange(W) + 0.5 - shift
    np.testing.assert_array_equal(valid, np.broadcast_to(columns >= 0, (W, W)))
    uv2, z2, defined = reproject(depth, K, translated(), K, translated(x=baseline))
    assert defined.all() and np.allclose(z2, distance)
    np.testing.assert_allclose(uv2[..., 0], np.broadcast_to(np.arange(W) + 0.5 - shift, (W, W)), atol=1e-3)


def test_bad_shapes_give_one_line_errors():
    depth = np.ones((8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="depth must be"):
        covisibility(depth[None], depth, K, K, np.eye(4), np.eye(4))
    with pytest.raises(ValueError, match="K must be 3x3"):
        covisibility(depth, depth, K[:2], K, np.eye(4), np.eye(4))
