"""Small inputs for the importer tests, built in the test: a COLMAP project with known cameras, poses, 3-D points
and a bright marker drawn where a known 3-D point projects, and folders of image pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from croco.importers.colmap_io import (
    Camera,
    Image,
    Point3D,
    Reconstruction,
    rotation_to_quaternion,
    write_model,
)

WIDTH, HEIGHT = 160, 120
FOCAL = 100.0
CENTRE = (81.3, 58.7)
MARKER = np.array([2.25, 2.0, 5.0])  # projects near the lower right corner of the square crop of image 1
# which 3-D points each image observes (ids): shared counts 1&2: 40, 1&3: 10, 2&3: 30, 3&4: 10
OBSERVED = {1: range(60), 2: range(20, 80), 3: range(50, 100), 4: range(90, 100)}
DISTORTION = {
    "PINHOLE": [],
    "SIMPLE_RADIAL": [0.2],
    "RADIAL": [0.15, 0.05],
    "OPENCV": [0.15, 0.02, 0.002, -0.003],
}


def rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def camera_params(model: str) -> np.ndarray:
    cx, cy = CENTRE
    if model in ("PINHOLE", "OPENCV"):
        return np.array([FOCAL, FOCAL * 1.01, cx, cy, *DISTORTION[model]])
    return np.array([FOCAL, cx, cy, *DISTORTION[model]])


def distort(model: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP's lens models, written out here for the test (normalised coordinates)."""
    r2 = x * x + y * y
    if model == "PINHOLE":
        return x, y
    if model == "SIMPLE_RADIAL":
        (k,) = DISTORTION[model]
        return x * (1 + k * r2), y * (1 + k * r2)
    if model == "RADIAL":
        k1, k2 = DISTORTION[model]
        return x * (1 + k1 * r2 + k2 * r2 * r2), y * (1 + k1 * r2 + k2 * r2 * r2)
    k1, k2, p1, p2 = DISTORTION[model]
    radial = 1 + k1 * r2 + k2 * r2 * r2
    return (
        x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
        y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y),
    )


def focal_xy(model: str) -> tuple[float, float]:
    return (FOCAL, FOCAL * 1.01) if model in ("PINHOLE", "OPENCV") else (FOCAL, FOCAL)


def world_to_camera(image_id: int) -> np.ndarray:
    """Camera ``i`` sits at x = 0.3 (i - 1), turned by 0.04 (i - 1) rad about y."""
    rotation_c2w = rotation_y(0.04 * (image_id - 1))
    centre = np.array([0.3 * (image_id - 1), 0.05 * (image_id - 1), 0.0])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_c2w.T
    matrix[:3, 3] = -rotation_c2w.T @ centre
    return matrix


def project(model: str, image_id: int, points: np.ndarray, distorted: bool = True) -> np.ndarray:
    """(n, 2) pixel positions (continuous convention) of world points in image ``image_id``."""
    matrix = world_to_camera(image_id)
    camera = np.atleast_2d(points) @ matrix[:3, :3].T + matrix[:3, 3]
    x, y = camera[:, 0] / camera[:, 2], camera[:, 1] / camera[:, 2]
    if distorted:
        x, y = distort(model, x, y)
    fx, fy = focal_xy(model)
    return np.stack([fx * x + CENTRE[0], fy * y + CENTRE[1]], axis=1)


def scene_points(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [rng.uniform(-0.5, 1.4, 100), rng.uniform(-0.4, 0.5, 100), rng.uniform(4.0, 6.0, 100)], axis=1
    )


def marker_image(model: str, image_id: int, seed: int) -> np.ndarray:
    """Dark texture with a bright Gaussian spot (sigma 2.5 px) where the lens puts ``MARKER``."""
    rng = np.random.default_rng(seed)
    (u, v) = project(model, image_id, MARKER)[0]
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    spot = 200.0 * np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * 2.5**2))
    base = 30.0 + rng.uniform(-3, 3, (HEIGHT, WIDTH))
    grey = np.clip(base + spot, 0, 255).astype(np.uint8)
    return np.stack([grey, grey, grey], axis=-1)


@dataclass
class ColmapProject:
    root: Path
    model: Reconstruction
    points: np.ndarray


def make_colmap_project(
    root: Path, model: str = "PINHOLE", binary: bool = True, images: tuple[int, ...] = (1, 2, 3, 4)
) -> ColmapProject:
    """``root/images/view_<i>.png`` and ``root/sparse/0/{cameras,images,points3D}.{bin,txt}``: one camera of
    ``model``, the images of ``images``; every observed point projects inside the centre square of its image."""
    points = scene_points()
    reconstruction = Reconstruction()
    reconstruction.cameras[1] = Camera(1, model, WIDTH, HEIGHT, camera_params(model))
    tracks: dict[int, list[tuple[int, int]]] = {p: [] for p in range(len(points))}
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image_id in images:
        ids = np.array(list(OBSERVED[image_id]), dtype=np.int64)
        xys = project(model, image_id, points[ids])
        margin = (WIDTH - HEIGHT) / 2
        assert np.all((xys[:, 0] > margin) & (xys[:, 0] < WIDTH - margin)), "scene point outside the crop"
        assert np.all((xys[:, 1] > 0) & (xys[:, 1] < HEIGHT))
        # an unobserved keypoint (-1) as COLMAP writes them too
        xys = np.vstack([xys, [[5.0, 5.0]]])
        ids = np.append(ids, -1)
        matrix = world_to_camera(image_id)
        name = f"view_{image_id}.png"
        reconstruction.images[image_id] = Image(
            image_id, rotation_to_quaternion(matrix[:3, :3]), matrix[:3, 3].copy(), 1, name, xys, ids
        )
        for index, point_id in enumerate(ids.tolist()):
            if point_id >= 0:
                tracks[point_id].append((image_id, index))
        PILImage.fromarray(marker_image(model, image_id, image_id)).save(root / "images" / name)
    for point_id, track in tracks.items():
        if track:
            track_array = np.array(track, dtype=np.int32)
            reconstruction.points3D[point_id] = Point3D(
                point_id, points[point_id], np.array([200, 100, 50], np.uint8), 0.5, track_array[:, 0],
                track_array[:, 1],
            )  # fmt: skip
    write_model(reconstruction, root / "sparse" / "0", binary=binary)
    return ColmapProject(root, reconstruction, points)


def spot_centre(image: np.ndarray) -> np.ndarray:
    """(u, v), continuous convention, of the bright spot: intensity-weighted centre around the brightest pixel."""
    grey = image.astype(np.float64).mean(axis=2)
    v, u = np.unravel_index(np.argmax(grey), grey.shape)
    top, left = max(0, v - 5), max(0, u - 5)
    window = grey[top : v + 6, left : u + 6]
    weight = np.clip(window - np.median(grey), 0, None)
    rows, cols = np.mgrid[top : top + window.shape[0], left : left + window.shape[1]] + 0.5
    return np.array([(cols * weight).sum() / weight.sum(), (rows * weight).sum() / weight.sum()])


def write_pair_folder(root: Path, pairs: int, size: tuple[int, int] = (90, 120), seed: int = 0) -> list[Path]:
    """``root/<scene>/p<i>_1.jpg`` and ``_2.png`` of smooth random images; returns the first images."""
    rng = np.random.default_rng(seed)
    firsts = []
    for index in range(pairs):
        folder = root / f"scene{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        for view, ext in ((1, "jpg"), (2, "png")):
            coarse = rng.integers(0, 255, (size[0] // 10 + 1, size[1] // 10 + 1, 3), dtype=np.uint8)
            pixels = PILImage.fromarray(coarse).resize((size[1], size[0]), PILImage.Resampling.BILINEAR)
            pixels.save(folder / f"p{index}_{view}.{ext}")
        firsts.append(folder / f"p{index}_1.jpg")
    return firsts


def tiny_pretraining_overrides(kind: str, val_fraction: float) -> list[str]:
    """``data=<kind>`` (the one override a user gives after importing into data/<kind>), plus what makes the
    pretraining tiny and fast for a test."""
    return [
        "experiment=pretrain",
        f"data={kind}",
        "model=tiny",
        "data.img_size=64",
        "data.transforms=crop64+acolor",
        "data.batch_size=2",
        "data.num_workers=0",
        f"data.val_fraction={val_fraction}",
        "trainer=cpu",
        "trainer.precision=32-true",
        "trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "logger=csv",
    ]
