"""Co-visibility of two depth views: the one reprojection used for pair selection, flow and stereo validity.

A pixel of view 1 is *visible in view 2* when its 3-D point (from depth 1) projects inside view 2, in front of
the camera, and view 2's own depth there agrees with the projected depth within a relative tolerance
(otherwise something nearer hides it: the occlusion test). The depth of view 2 is sampled at the four pixels
around the projected position (the bilinear neighbourhood) and the point counts as visible if any of them
agrees, which keeps surfaces seen at grazing angles and half-pixel edge offsets from being called occluded.

``covis12`` is the fraction of *all* view-1 pixels visible in view 2 (invalid-depth pixels count as not
visible, as in the released Habitat generator, which divides by H·W); ``covis21`` the converse; the pair's
overlap is ``min(covis12, covis21)``. The released generator matched point clouds with a 5 cm
nearest-neighbour radius; reprojection with an occlusion test gives the same quantity without a k-d tree and
is exact for rendered depth.

Conventions (world y up, OpenCV camera axes, camera-to-world poses, z-depth, pixel centres at +0.5) are those
of ``croco.geometry.cameras``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from croco.geometry.cameras import camera_rays

DEFAULT_RTOL = 0.05
"""Relative depth tolerance of the occlusion test: a surface must be >5 % nearer to hide a point."""


@lru_cache(maxsize=8)
def _ray_planes(K_bytes: bytes, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only x and y planes of the z = 1 camera rays for a K (cached: pairs share intrinsics)."""
    rays = camera_rays(np.frombuffer(K_bytes, dtype=np.float64).reshape(3, 3), height, width)
    x, y = np.ascontiguousarray(rays[..., 0]), np.ascontiguousarray(rays[..., 1])
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _check_view(name: str, depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> None:
    if depth.ndim != 2:
        raise ValueError(f"{name}: depth must be (H, W), got shape {depth.shape}")
    if np.shape(K) != (3, 3) or np.shape(pose) != (4, 4):
        raise ValueError(f"{name}: K must be 3x3 and pose 4x4, got {np.shape(K)} and {np.shape(pose)}")


def reproject(
    depth1: np.ndarray, K1: np.ndarray, pose1: np.ndarray, K2: np.ndarray, pose2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project every view-1 pixel into view 2.

    Returns ``uv2`` (H, W, 2) float32 continuous pixel coordinates in view 2, ``z2`` (H, W) float32 depth in
    view 2's camera frame, and ``valid`` (H, W) bool: view-1 depth is valid and the point is in front of
    camera 2 (``uv2`` is 0 elsewhere).
    """
    _check_view("view 1", depth1, K1, pose1)
    u, v, z2, valid = _project(depth1, K1, pose1, K2, pose2)
    return np.stack([u, v], axis=-1), z2, valid


def _project(
    depth1: np.ndarray, K1: np.ndarray, pose1: np.ndarray, K2: np.ndarray, pose2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(u2, v2, z2, valid), each (H, W): the reprojection as separate float32 planes (the fast path)."""
    height, width = depth1.shape
    relative = np.linalg.inv(np.asarray(pose2, dtype=np.float64)) @ np.asarray(pose1, dtype=np.float64)
    # homogeneous view-2 pixel of the camera-1 point d * [x, y, 1]:  d * (M @ [x, y, 1]) + m
    matrix = (np.asarray(K2, dtype=np.float64) @ relative[:3, :3]).astype(np.float32)
    offset = (np.asarray(K2, dtype=np.float64) @ relative[:3, 3]).astype(np.float32)
    x, y = _ray_planes(np.asarray(K1, dtype=np.float64).tobytes(), height, width)
    depth = depth1.astype(np.float32, copy=False)
    h = [(matrix[i, 0] * x + matrix[i, 1] * y + matrix[i, 2]) * depth + offset[i] for i in range(3)]
    z2 = h[2]
    valid = (depth > 0) & (z2 > np.float32(1e-6))
    inverse = np.float32(1.0) / np.where(valid, z2, np.float32(1.0))
    u2 = np.where(valid, h[0] * inverse, np.float32(0.0))
    v2 = np.where(valid, h[1] * inverse, np.float32(0.0))
    return u2, v2, z2, valid


def visible_in_other(
    depth1: np.ndarray,
    depth2: np.ndarray,
    K1: np.ndarray,
    K2: np.ndarray,
    pose1: np.ndarray,
    pose2: np.ndarray,
    *,
    rtol: float = DEFAULT_RTOL,
) -> np.ndarray:
    """(H1, W1) bool: which view-1 pixels are seen by view 2 (in frame, in front, not occluded)."""
    _check_view("view 1", depth1, K1, pose1)
    _check_view("view 2", depth2, K2, pose2)
    u, v, z2, valid = _project(depth1, K1, pose1, K2, pose2)
    height2, width2 = depth2.shape
    inside = valid & (u >= 0) & (u < width2) & (v >= 0) & (v < height2)
    candidates = np.flatnonzero(inside)
    u, v, z = u.reshape(-1)[candidates], v.reshape(-1)[candidates], z2.reshape(-1)[candidates]
    # Bilinear neighbourhood of the projected position (pixel centres at +0.5).
    u0 = np.floor(u - np.float32(0.5)).astype(np.int64)
    v0 = np.floor(v - np.float32(0.5)).astype(np.int64)
    tolerance = np.float32(rtol) * z
    flat_depth = depth2.reshape(-1)
    seen = np.zeros(len(candidates), dtype=bool)
    columns = (np.maximum(u0, 0), np.minimum(u0 + 1, width2 - 1))
    for row in (np.maximum(v0, 0) * width2, np.minimum(v0 + 1, height2 - 1) * width2):
        for column in columns:
            sampled = np.take(flat_depth, row + column)
            seen |= (sampled > 0) & (np.abs(sampled - z) <= tolerance)
    mask = np.zeros(depth1.size, dtype=bool)
    mask[candidates[seen]] = True
    return mask.reshape(depth1.shape)


def covisibility(
    depth1: np.ndarray,
    depth2: np.ndarray,
    K1: np.ndarray,
    K2: np.ndarray,
    pose1: np.ndarray,
    pose2: np.ndarray,
    *,
    rtol: float = DEFAULT_RTOL,
) -> tuple[float, float]:
    """(covis12, covis21): fraction of view-1 pixels seen by view 2 and of view-2 pixels seen by view 1."""
    mask12 = visible_in_other(depth1, depth2, K1, K2, pose1, pose2, rtol=rtol)
    mask21 = visible_in_other(depth2, depth1, K2, K1, pose2, pose1, rtol=rtol)
    return float(mask12.mean()), float(mask21.mean())


def optical_flow(
    depth1: np.ndarray,
    depth2: np.ndarray,
    K1: np.ndarray,
    K2: np.ndarray,
    pose1: np.ndarray,
    pose2: np.ndarray,
    *,
    rtol: float = DEFAULT_RTOL,
) -> tuple[np.ndarray, np.ndarray]:
    """Flow of a static scene from view 1 to view 2 and its validity.

    ``flow`` (H, W, 2) float32 is (position in view 2) − (position in view 1) in pixels for every pixel with
    valid depth that lies in front of camera 2 (0 elsewhere), dense like the usual flow ground truth,
    including points that leave the frame or get occluded; ``valid`` (H, W) bool marks the pixels actually
    seen in view 2.
    """
    _check_view("view 1", depth1, K1, pose1)
    u2, v2, _, defined = _project(depth1, K1, pose1, K2, pose2)
    height, width = depth1.shape
    grid_u = np.arange(width, dtype=np.float32)[None, :] + np.float32(0.5)
    grid_v = np.arange(height, dtype=np.float32)[:, None] + np.float32(0.5)
    flow = np.stack([u2 - grid_u, v2 - grid_v], axis=-1)
    flow[~defined] = 0.0
    valid = visible_in_other(depth1, depth2, K1, K2, pose1, pose2, rtol=rtol)
    return flow.astype(np.float32), valid


def disparity_from_depth(depth: np.ndarray, focal: float, baseline: float) -> np.ndarray:
    """Rectified-stereo disparity f·B/depth in pixels (0 where depth is invalid)."""
    safe = np.where(depth > 0, depth, 1.0)
    return np.where(depth > 0, focal * baseline / safe, 0.0).astype(np.float32)
