"""``source=colmap``: the pairs of a COLMAP reconstruction, chosen by the 3-D points their images share.

Input: a COLMAP project folder (``input=``) with the model in ``sparse/0``, ``sparse`` or the folder itself
(``source.model`` names another sub-folder) as ``.bin`` or ``.txt`` files, and the images under ``images/``
(``source.images``). Each registered image becomes a view:

- **intrinsics**: the camera's pinhole part (``f``/``fx, fy``, ``cx, cy``); an image whose camera model has
  distortion (SIMPLE_RADIAL, RADIAL, OPENCV) is undistorted to that pinhole camera first, at its own size (the
  corners that no source pixel reaches stay black); fisheye and other models are skipped and counted;
- **pose**: COLMAP stores world-to-camera ``[R | t]`` in OpenCV axes, the shard camera-to-world, so
  ``pose = [[R^T, -R^T t], [0, 1]]`` (units are the reconstruction's, metres only if it was scaled);
- the image is then resized (shorter side to ``resolution``) and centre-cropped, ``K`` with it
  (``croco.importers.images``).

**Pairs** follow the MegaDepth rule of D2-Net (Dusmanu et al., CVPR 2019; the pairs that CroCo v2 and DUSt3R
draw from MegaDepth): the co-visibility of view ``i`` in view ``j`` is the share of the 3-D points observed in
``i`` that ``j`` observes too, ``covis_ij = |P_i & P_j| / |P_i|``, and ``overlap = min(covis12, covis21)``;
every pair of images with ``overlap`` in ``[overlap_min, overlap_max]`` (and at least ``source.min_shared_points``
shared points) is imported, the lower image id as view 1. ``P_i`` counts only the points that project inside
the cropped view, so the stored overlap describes the stored images.

**Depth** (``depth=true``): sparse, from the same points: each point observed by the view is projected with
the final ``K`` and pose, and its camera-frame z written at its pixel (the nearest point where several land);
every other pixel is NaN, unknown (docs/data-format.md, "Unknown values").

The scene id is ``source.scene`` or the input folder's name (one reconstruction, one scene).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from croco.data.shards import PairRecord
from croco.importers.base import Importer, ImportSettings, SkipPair, Skipped, WorkItem
from croco.importers.colmap_io import (  # noqa: F401  (the reader and writer, exported from here too)
    Camera,
    Image,
    Point3D,
    Reconstruction,
    find_model_files,
    quaternion_to_rotation,
    read_model,
    rotation_to_quaternion,
    write_model,
)
from croco.importers.images import crop_square, read_image, resize_image, square_crop_transform

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
DISTORTED_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV")
MODEL_SEARCH = ("sparse/0", "sparse", ".")


def pinhole_intrinsics(camera: Camera) -> np.ndarray:
    """The 3x3 pinhole part of a supported camera (the K of its undistorted image)."""
    p = camera.params
    if camera.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif camera.model in ("PINHOLE", "OPENCV"):
        fx, fy, cx, cy = p[:4]
    else:
        raise ValueError(f"camera {camera.id}: model {camera.model} is not supported")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def distort_normalised(camera: Camera, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP's distortion of normalised image coordinates (``x = (u - cx) / fx``) for the supported models."""
    p = camera.params
    r2 = x * x + y * y
    if camera.model in PINHOLE_MODELS:
        return x, y
    if camera.model == "SIMPLE_RADIAL":
        radial = p[3] * r2
        return x + x * radial, y + y * radial
    if camera.model == "RADIAL":
        radial = p[3] * r2 + p[4] * r2 * r2
        return x + x * radial, y + y * radial
    if camera.model == "OPENCV":
        k1, k2, p1, p2 = p[4:8]
        radial = k1 * r2 + k2 * r2 * r2
        dx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
        return x + dx, y + dy
    raise ValueError(f"camera {camera.id}: model {camera.model} is not supported")


def undistort_image(image: np.ndarray, camera: Camera, K: np.ndarray | None = None) -> np.ndarray:
    """The image the camera's pinhole part would have taken, same size: every output pixel centre is distorted
    to where the lens put it and sampled there (bilinear; black outside the source).

    ``K`` is that pinhole part at the size of ``image`` (default ``pinhole_intrinsics(camera)``, the camera's own
    size): the lens acts on normalised coordinates, so a resized image is undistorted with its resized K."""
    if camera.model in PINHOLE_MODELS:
        return image
    from scipy.ndimage import map_coordinates

    K = pinhole_intrinsics(camera) if K is None else np.asarray(K, dtype=np.float64)
    rows, cols = _source_positions(
        camera.model, tuple(camera.params.tolist()), tuple(K.ravel().tolist()), image.shape[:2]
    )
    out = np.empty_like(image)
    for channel in range(image.shape[2]):
        sampled = map_coordinates(image[..., channel], [rows, cols], order=1, cval=0.0, output=np.float32)
        out[..., channel] = np.clip(np.rint(sampled), 0, 255)
    return out


@functools.lru_cache(maxsize=16)
def _source_positions(
    model: str, params: tuple[float, ...], K: tuple[float, ...], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) array positions in the distorted image of every undistorted pixel centre (one per camera
    and size: the images of one camera share it)."""
    fx, _, cx, _, fy, cy = K[:6]
    camera = Camera(0, model, shape[1], shape[0], np.asarray(params))
    v, u = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    xd, yd = distort_normalised(camera, (u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy)
    return yd * fy + cy - 0.5, xd * fx + cx - 0.5


@dataclass(frozen=True)
class View:
    """One registered image as the shard stores it: file, camera, final ``K`` and camera-to-world pose."""

    image_id: int
    path: str
    camera: Camera
    K: np.ndarray  # after undistortion, resize and crop
    pose: np.ndarray  # camera-to-world, OpenCV axes
    world_to_camera: np.ndarray


def visible_points(model: Reconstruction, view: View, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(point ids, (n, 3) pixel u, v and depth z) of the 3-D points that ``view`` observes and that project
    inside its ``size`` x ``size`` crop, in front of the camera."""
    image = model.images[view.image_id]
    ids = np.unique(image.point3D_ids[image.point3D_ids >= 0])
    ids = np.array([i for i in ids.tolist() if i in model.points3D], dtype=np.int64)
    if not len(ids):
        return ids, np.zeros((0, 3))
    xyz = np.stack([model.points3D[i].xyz for i in ids.tolist()])
    camera_xyz = xyz @ view.world_to_camera[:3, :3].T + view.world_to_camera[:3, 3]
    z = camera_xyz[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        pixels = camera_xyz @ view.K.T
        u, v = pixels[:, 0] / z, pixels[:, 1] / z
    inside = (z > 0) & (u >= 0) & (u < size) & (v >= 0) & (v < size)
    return ids[inside], np.stack([u[inside], v[inside], z[inside]], axis=1)


def sparse_depth(points: np.ndarray, size: int) -> np.ndarray:
    """A ``size`` x ``size`` depth map with the z of each point at its pixel (the nearest wins), NaN elsewhere."""
    depth = np.full((size, size), np.nan, dtype=np.float32)
    if len(points):
        order = np.argsort(-points[:, 2])  # farthest first: the nearest point is written last
        u = np.floor(points[order, 0]).astype(np.int64)
        v = np.floor(points[order, 1]).astype(np.int64)
        depth[v, u] = points[order, 2]
    return depth


@functools.lru_cache(maxsize=2)
def _cached_model(folder: str, mtimes: tuple[float, ...]) -> Reconstruction:
    """The model of ``folder``, read once per process (``mtimes`` makes a rewritten model a new entry)."""
    return read_model(folder)


@dataclass(frozen=True)
class ColmapPairItem(WorkItem):
    image1: int
    image2: int
    covis12: float
    covis21: float


class ColmapImporter(Importer):
    name = "colmap"

    def __init__(
        self,
        settings: ImportSettings,
        *,
        model: str | None = None,
        images: str = "images",
        scene: str | None = None,
        min_shared_points: int = 8,
    ) -> None:
        super().__init__(
            settings, model=model, images=images, scene=scene, min_shared_points=min_shared_points
        )
        if int(min_shared_points) < 1:
            raise ValueError(f"source.min_shared_points must be >= 1, got {min_shared_points!r}")
        self.min_shared_points = int(min_shared_points)
        self.image_root = settings.input / images
        self.scene = scene or settings.input.resolve().name

    # -- the model ----------------------------------------------------------------------------------------

    def model_folder(self) -> Path:
        """Where the model files are: ``source.model`` or the first of sparse/0, sparse, the input folder."""
        candidates = [self.options["model"]] if self.options["model"] else list(MODEL_SEARCH)
        for candidate in candidates:
            found = find_model_files(self.settings.input / candidate)
            if found is not None:
                return found[0]
        looked = ", ".join(str(self.settings.input / c) for c in candidates)
        raise FileNotFoundError(
            f"input={self.settings.input}: no COLMAP model (cameras, images, points3D as .bin or .txt) in {looked}"
        )

    def check_input(self) -> None:
        if not self.settings.input.is_dir():
            raise NotADirectoryError(
                f"input={self.settings.input}: expected a COLMAP project folder (with sparse/0 and images/)"
            )
        self.model_folder()
        if not self.image_root.is_dir():
            raise FileNotFoundError(
                f"input={self.settings.input}: image folder {self.image_root} does not exist"
            )

    def _model(self) -> Reconstruction:
        folder = self.model_folder()
        mtimes = tuple(p.stat().st_mtime for p in sorted(folder.iterdir()) if p.is_file())
        return _cached_model(str(folder), mtimes)

    def view(self, model: Reconstruction, image_id: int) -> View:
        image = model.images[image_id]
        camera = model.cameras[image.camera_id]
        transform, _ = square_crop_transform(camera.width, camera.height, self.settings.resolution)
        world_to_camera = image.world_to_camera()
        return View(
            image_id=image_id,
            path=str(self.image_root / image.name),
            camera=camera,
            K=transform @ pinhole_intrinsics(camera),
            pose=np.linalg.inv(world_to_camera),
            world_to_camera=world_to_camera,
        )

    # -- the importer ---------------------------------------------------------------------------------------

    def settings_attrs(self) -> dict[str, Any]:
        return {**super().settings_attrs(), "model_folder": str(self.model_folder())}

    def scan(self):
        from scipy.sparse import csr_matrix

        model = self._model()
        size = self.settings.resolution
        views: list[View] = []
        visible: list[np.ndarray] = []
        for image_id in sorted(model.images):
            image = model.images[image_id]
            camera = model.cameras.get(image.camera_id)
            path = self.image_root / image.name
            if camera is None:
                yield Skipped("unknown camera", f"{path}: camera {image.camera_id} is not in the model")
            elif camera.model not in PINHOLE_MODELS + DISTORTED_MODELS:
                supported = ", ".join(PINHOLE_MODELS + DISTORTED_MODELS)
                yield Skipped(
                    "unsupported camera model",
                    f"{path}: camera model {camera.model} (supported: {supported})",
                )
            elif not path.is_file():
                yield Skipped("missing image file", f"{path}: registered in the model, no such file")
            else:
                view = self.view(model, image_id)
                views.append(view)
                visible.append(visible_points(model, view, size)[0])
        if len(views) < 2:
            return
        # image x point incidence; shared[i, j] = points seen by both (the MegaDepth rule, see the docstring)
        point_column = {p: c for c, p in enumerate(sorted(set().union(*(v.tolist() for v in visible))))}
        rows = np.concatenate([np.full(len(v), i) for i, v in enumerate(visible)])
        cols = np.array([point_column[p] for v in visible for p in v.tolist()], dtype=np.int64)
        incidence = csr_matrix(
            (np.ones(len(rows), np.int32), (rows, cols)), shape=(len(views), len(point_column))
        )
        shared = (incidence @ incidence.T).tocoo()
        counts = np.array([len(v) for v in visible])
        keep = (shared.row < shared.col) & (shared.data >= self.min_shared_points)
        low, high = self.settings.overlap_min, self.settings.overlap_max
        for i, j, n in sorted(
            zip(shared.row[keep].tolist(), shared.col[keep].tolist(), shared.data[keep].tolist())
        ):
            covis12, covis21 = n / counts[i], n / counts[j]
            if low <= min(covis12, covis21) <= high:
                first, second = views[i], views[j]
                yield ColmapPairItem(
                    name=f"{first.path} & {second.path}",
                    scene=self.scene,
                    image1=first.image_id,
                    image2=second.image_id,
                    covis12=float(covis12),
                    covis21=float(covis21),
                )

    def _load_view(self, model: Reconstruction, image_id: int) -> tuple[View, np.ndarray, np.ndarray | None]:
        view = self.view(model, image_id)
        image = read_image(view.path)
        camera = view.camera
        if image.shape[:2] != (camera.height, camera.width):
            raise SkipPair(
                "image size differs from its camera",
                f"{view.path}: {image.shape[1]}x{image.shape[0]}, camera {camera.id} is "
                f"{camera.width}x{camera.height}",
            )
        size = self.settings.resolution
        # resize first (anti-aliased), then undistort at that size with the resized pinhole K: the lens acts on
        # normalised coordinates, and undistorting the smaller image costs a fraction of the full one
        transform, (width, height) = square_crop_transform(camera.width, camera.height, size)
        resized = resize_image(image, width, height)
        scaled_K = np.diag([width / camera.width, height / camera.height, 1.0]) @ pinhole_intrinsics(camera)
        fitted = crop_square(undistort_image(resized, camera, scaled_K), transform, size)
        depth = sparse_depth(visible_points(model, view, size)[1], size) if self.settings.depth else None
        return view, fitted, depth

    def load(self, item: ColmapPairItem) -> PairRecord:
        model = self._model()
        view1, image1, depth1 = self._load_view(model, item.image1)
        view2, image2, depth2 = self._load_view(model, item.image2)
        return PairRecord(
            image1=image1,
            image2=image2,
            K1=view1.K,
            K2=view2.K,
            pose1=view1.pose,
            pose2=view2.pose,
            covis12=item.covis12,
            covis21=item.covis21,
            scene=item.scene,
            depth1=depth1,
            depth2=depth2,
        )


IMPORTER = ColmapImporter
