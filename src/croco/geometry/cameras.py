"""Camera conventions and the geometry of pinhole views (intrinsics, poses, rays, unprojection).

Conventions (shared by every renderer, the sampler, co-visibility and the shards):

- World frame: right-handed, metres, **y up** with the floor at y = 0 (Habitat's convention, so navmesh points
  and our procedural rooms live in the same frame).
- Camera frame: OpenCV axes, x right, y down, z forward. A pose is the 4x4 camera-to-world matrix ``[[R, t],
  [0, 1]]`` with ``X_world = R @ X_cam + t``; ``t`` is the camera centre.
- Depth is the z coordinate of the surface point in the camera frame (not the distance along the ray); 0 marks
  an invalid pixel.
- Pixels use continuous image coordinates: pixel (row v, column u) covers ``[u, u+1) x [v, v+1)``, its centre
  is at ``(u + 0.5, v + 0.5)``. With ``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` the principal point is then
  the image centre, exactly as habitat-sim renders and as the official CroCo metadata stores K.
"""

from __future__ import annotations

import math

import numpy as np

UP = np.array([0.0, 1.0, 0.0])
"""World up axis (y)."""


def intrinsics_from_hfov(hfov_deg: float, width: int, height: int | None = None) -> np.ndarray:
    """Pinhole K with square pixels and the principal point at the image centre: f = (W/2) / tan(hfov/2)."""
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"hfov_deg must be in (0, 180), got {hfov_deg}")
    if width <= 0 or (height is not None and height <= 0):
        raise ValueError(f"image size must be positive, got width={width} height={height}")
    height = width if height is None else height
    focal = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def pixel_centers(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) float32 grids of the pixel centres, shape (H, W) each (continuous convention, +0.5)."""
    u = np.arange(width, dtype=np.float32) + 0.5
    v = np.arange(height, dtype=np.float32) + 0.5
    return np.broadcast_to(u[None, :], (height, width)), np.broadcast_to(v[:, None], (height, width))


def camera_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 camera-frame directions K^-1 [u, v, 1] with z = 1, so that a hit at ray parameter t
    has depth exactly t."""
    u, v = pixel_centers(height, width)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    skew = float(K[0, 1])
    y = (v - cy) / fy
    x = (u - cx - skew * y) / fx
    return np.stack([x, y, np.ones_like(x)], axis=-1).astype(np.float32)


# --------------------------------------------------------------------------------------------- rotations


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix of ``angle`` radians about ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    skew = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * skew + (1.0 - math.cos(angle)) * (skew @ skew)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = UP) -> np.ndarray | None:
    """Camera-to-world rotation (OpenCV axes) looking from ``eye`` at ``target`` with image-up towards ``up``.

    Returns None when the viewing direction is (nearly) parallel to ``up``, where the roll is undefined.
    """
    forward = np.asarray(target, dtype=np.float64) - np.asarray(eye, dtype=np.float64)
    norm = np.linalg.norm(forward)
    if norm < 1e-9:
        return None
    forward /= norm
    right = np.cross(forward, up)
    right_norm = np.linalg.norm(right)
    if right_norm < 1e-6:
        return None
    right /= right_norm
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


def heading_rotation(heading: float) -> np.ndarray:
    """Level camera (OpenCV axes) whose forward direction is (sin h, 0, cos h) in the world."""
    forward = np.array([math.sin(heading), 0.0, math.cos(heading)])
    rotation = look_at(np.zeros(3), forward)
    assert rotation is not None  # a level direction is never parallel to up
    return rotation


def make_pose(rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world pose from a rotation and the camera centre."""
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = centre
    return pose


def unproject_depth(depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(H, W, 3) world points of every pixel (pixels with depth 0 map to the camera centre; mask them)."""
    height, width = depth.shape
    rays = camera_rays(K, height, width).astype(np.float64)
    points_cam = rays * depth[..., None]
    return points_cam @ pose[:3, :3].T + pose[:3, 3]


def mean_valid_point(depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray | None:
    """Mean 3-D point of the valid pixels: the look-at target of the second view (None if no valid pixel)."""
    valid = depth > 0
    count = int(np.count_nonzero(valid))
    if count == 0:
        return None
    height, width = depth.shape
    rays = camera_rays(K, height, width)
    weights = np.where(valid, depth, 0.0).astype(np.float64)
    # mean of d * [x, y, 1] over valid pixels, in the camera frame, then to the world
    mean_camera = (
        np.array([np.sum(weights * rays[..., 0]), np.sum(weights * rays[..., 1]), np.sum(weights)]) / count
    )
    return pose[:3, :3] @ mean_camera + pose[:3, 3]
