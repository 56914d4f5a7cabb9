"""An independent check of the generator's geometry, from what a shard stores.

View 1 is warped into view 2 with nothing but the stored depth, K and poses (own back-projection, projection
and bilinear sampling here, none of ``croco.geometry``): on co-visible pixels the colours must agree far
better than against view 2 shifted by 8-24 px. This is what cross-view completion relies on, and it catches
any disagreement between the renderer, the stored cameras and the pixel convention (centre of pixel (u, v) at
(u + 0.5, v + 0.5)), which is also checked directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from croco.data.shards import ShardReader
from croco.geometry.cameras import look_at, make_pose
from croco.synth.pipeline import generate_pairs
from croco.synth.render import CpuRenderer
from croco.synth.scene import CLASS_ID, simple_scene

SIZE = 128


def pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return u, v


def back_project(depth: np.ndarray, K: np.ndarray, pose: np.ndarray, u=None, v=None) -> np.ndarray:
    """(H, W, 3) world points of pixel positions (default: the pixel centres) at the given z-depths."""
    if u is None:
        u, v = pixel_centres(*depth.shape)
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(K).T  # z = 1
    return (rays * depth[..., None]) @ pose[:3, :3].T + pose[:3, 3]


def project(points: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, z) of world points in a camera (continuous pixel coordinates)."""
    camera = (points - pose[:3, 3]) @ pose[:3, :3]  # R^T (X - t), row-wise
    z = camera[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        image = camera @ K.T
        return image[..., 0] / z, image[..., 1] / z, z


def bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear samples of an (H, W) image at continuous positions (centres at +0.5; positions inside)."""
    x, y = u - 0.5, v - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    height, width = image.shape
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    return (
        image[y0, x0] * (1 - fx) * (1 - fy)
        + image[y0, x1] * fx * (1 - fy)
        + image[y1, x0] * (1 - fx) * fy
        + image[y1, x1] * fx * fy
    )


def grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def covisible(depth2: np.ndarray, u: np.ndarray, v: np.ndarray, z: np.ndarray, margin: float) -> np.ndarray:
    """In view 2 (``margin`` px from the border), in front, and not occluded: one of the four neighbouring
    pixels of view 2 has a depth within 1 % of the point's."""
    height, width = depth2.shape
    inside = (z > 0) & (u >= 0.5 + margin) & (u < width - 0.5 - margin) & (v >= 0.5) & (v < height - 0.5)
    seen = np.zeros(u.shape, dtype=bool)
    x0 = np.floor(np.where(inside, u, 1.0) - 0.5).astype(int)
    y0 = np.floor(np.where(inside, v, 1.0) - 0.5).astype(int)
    for dy in (0, 1):
        for dx in (0, 1):
            sampled = depth2[np.minimum(y0 + dy, height - 1), np.minimum(x0 + dx, width - 1)]
            seen |= np.abs(sampled - z) <= 0.01 * z
    return inside & seen


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("reprojection")
    # view-dependent appearance off (the defaults, spelled out): colours must depend on the surface point only
    (path,) = generate_pairs(
        folder, 6, seed=11, resolution=SIZE, pairs_per_scene=3, overlap_min=0.3, overlap_max=0.95,
        progress=False, exposure_std=0.0, white_balance_std=0.0, noise_std=0.0, specular=0.0,
    )  # fmt: skip
    reader = ShardReader(path)
    fields = ("image1", "image2", "K1", "K2", "pose1", "pose2", "depth1", "depth2")
    return [reader.read(index, fields=fields) for index in range(len(reader))]


def test_view_one_warped_through_the_stored_geometry_matches_view_two(pairs):
    rng = np.random.default_rng(0)
    true_errors, shifted_errors = [], []
    for pair in pairs:
        depth1, depth2 = pair["depth1"].astype(np.float64), pair["depth2"].astype(np.float64)
        points = back_project(depth1, pair["K1"], pair["pose1"])
        u, v, z = project(points, pair["K2"], pair["pose2"])
        shift = int(rng.integers(8, 25)) * (1 if rng.random() < 0.5 else -1)
        seen = covisible(depth2, u, v, z, margin=abs(shift) + 1) & (depth1 > 0)
        assert seen.mean() > 0.1
        grey1, grey2 = grey(pair["image1"]), grey(pair["image2"])
        true_errors.append(np.median(np.abs(bilinear(grey2, u[seen], v[seen]) - grey1[seen])))
        shifted_errors.append(np.median(np.abs(bilinear(grey2, u[seen] + shift, v[seen]) - grey1[seen])))
    true_error, shifted_error = np.median(true_errors), np.median(shifted_errors)
    assert true_error < 4.0, true_errors  # JPEG and texture resampling only
    assert true_error < 0.35 * shifted_error, (true_errors, shifted_errors)
    assert max(true_errors) < min(shifted_errors) + 2.0  # every pair, not just the median


def test_pixel_centres_back_project_and_project_onto_themselves(pairs):
    pair = pairs[0]
    u, v = pixel_centres(SIZE, SIZE)
    depth = pair["depth1"].astype(np.float64)
    valid = depth > 0
    again_u, again_v, again_z = project(
        back_project(depth, pair["K1"], pair["pose1"]), pair["K1"], pair["pose1"]
    )
    np.testing.assert_allclose(again_u[valid], u[valid], atol=1e-9)
    np.testing.assert_allclose(again_v[valid], v[valid], atol=1e-9)
    np.testing.assert_allclose(again_z[valid], depth[valid], rtol=1e-12)
    # the principal point of the stored K is the image centre: the corner (0, 0) of the image, not a centre
    np.testing.assert_allclose(pair["K1"][:2, 2], [SIZE / 2, SIZE / 2])


def test_the_renderer_samples_each_pixel_at_its_centre():
    """A camera tilted down at the floor: the rendered depth of pixel (v, u) is the depth of the ray through
    (u + 0.5, v + 0.5) to float32 precision, and clearly not that of the ray through (u, v)."""
    scene = simple_scene((8.0, 3.0, 8.0))
    K = np.array([[90.0, 0.0, 32.0], [0.0, 90.0, 32.0], [0.0, 0.0, 1.0]])
    height = 1.5
    eye = np.array([4.0, height, 1.0])
    rotation = look_at(eye, eye + np.array([0.0, -0.7, 1.0]))  # about 35 degrees down
    pose = make_pose(rotation, eye)
    view = CpuRenderer(64).render(scene, K, pose)
    floor = view.semantics == CLASS_ID["floor"]
    assert floor.mean() > 0.3

    def floor_depth(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(K).T @ rotation.T
        return -height / rays[..., 1]  # the ray parameter is the depth (camera z of the ray is 1)

    u, v = pixel_centres(64, 64)
    np.testing.assert_allclose(view.depth[floor], floor_depth(u, v)[floor], rtol=2e-6)
    corner_error = np.abs(view.depth[floor] / floor_depth(u - 0.5, v - 0.5)[floor] - 1.0)
    assert np.median(corner_error) > 1e-3
