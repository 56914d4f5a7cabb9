"""``source=habitat_release``: the official CroCo Habitat pairs, as the released generator writes them to disk.

Layout (naver/croco, ``datasets/habitat_sim/``: ``generate_from_metadata.py`` renders the released metadata
into it; the pretraining loader reads ``data/habitat_release/``)::

    habitat_release/<dataset>/.../<scene>/
        metadata.json                       # the scene's cameras (not needed here: each view has its own file)
        00000000_1.jpeg  00000000_2.jpeg    # 256 x 256 RGB, view 1 (masked) and view 2
        00000000_1_depth.exr  ..._2_depth.exr                   # half-float depth (z, metres), 0 = nothing
        00000000_1_camera_params.json  ..._2_camera_params.json
            {"camera_intrinsics": 3x3, "R_cam2world": 3x3, "t_cam2world": 3}

``R_cam2world`` / ``t_cam2world`` already map OpenCV camera axes (x right, y down, z forward) to the scene's
world, and the intrinsics put the principal point at (W/2, H/2): the shard conventions (docs/data-format.md),
so they are stored as they are. Co-visibility is computed from the two depth maps and cameras
(``croco.geometry.covisibility``, the shards' definition); without depth it stays unknown.

Every ``*_1.jpeg`` under ``input`` with its ``*_2.jpeg`` is a pair (sorted walk); its scene id is the scene
folder relative to ``input`` (``scannet/scene0000_00`` -> split id ``scannet/scene0000``). Folders named in
``exclude`` (path components, default ``val`` and ``minival``: HM3D's held-out scenes, as the official loader
leaves them out) are not imported. Missing camera files leave the cameras unknown; a missing depth file leaves
depth unknown (NaN) and the co-visibility too. Depth is read by ``croco.importers.exr`` (no OpenCV needed).
Skipped and counted: ``missing partner``, ``unreadable image``, ``invalid camera`` (a camera file that is not
the JSON above), ``unreadable depth``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from croco.data.shards import PairRecord
from croco.geometry.covisibility import covisibility
from croco.importers.base import Importer, ImportSettings, SkipPair, Skipped, WorkItem
from croco.importers.exr import read_exr_channel
from croco.importers.images import fit_square, read_image, square_crop_transform

MISSING_PARTNER = "missing partner"
INVALID_CAMERA = "invalid camera"
UNREADABLE_DEPTH = "unreadable depth"
VIEW_SUFFIX = "_1.jpeg"


@dataclass(frozen=True)
class ReleasePairItem(WorkItem):
    prefix: (
        str  # <scene folder>/<index>: the view files are <prefix>_<k>.jpeg, _depth.exr, _camera_params.json
    )


def view_files(prefix: str, view: int) -> tuple[Path, Path, Path]:
    """(image, depth, camera) files of view 1 or 2 of a pair."""
    return (
        Path(f"{prefix}_{view}.jpeg"),
        Path(f"{prefix}_{view}_depth.exr"),
        Path(f"{prefix}_{view}_camera_params.json"),
    )


def read_camera(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(K, camera-to-world pose) of a ``*_camera_params.json``; None when the file does not exist."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        K = np.asarray(data["camera_intrinsics"], dtype=np.float64)
        rotation = np.asarray(data["R_cam2world"], dtype=np.float64)
        translation = np.asarray(data["t_cam2world"], dtype=np.float64).reshape(-1)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SkipPair(INVALID_CAMERA, f"{path}: {type(error).__name__}: {error}") from None
    if K.shape != (3, 3) or rotation.shape != (3, 3) or translation.shape != (3,):
        raise SkipPair(
            INVALID_CAMERA,
            f"{path}: camera_intrinsics {K.shape}, R_cam2world {rotation.shape}, t_cam2world "
            f"{translation.shape}; expected 3x3, 3x3, 3",
        )
    if not (np.isfinite(K).all() and np.isfinite(rotation).all() and np.isfinite(translation).all()):
        raise SkipPair(INVALID_CAMERA, f"{path}: non-finite values")
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, translation
    return K, pose


def read_depth(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The depth map (metres, 0 = nothing hit) of a ``*_depth.exr``; None when the file does not exist."""
    if not path.exists():
        return None
    try:
        depth = read_exr_channel(path)
    except (OSError, ValueError) as error:
        raise SkipPair(
            UNREADABLE_DEPTH, str(error) if str(path) in str(error) else f"{path}: {error}"
        ) from None
    if depth.shape != shape:
        raise SkipPair(UNREADABLE_DEPTH, f"{path}: depth is {depth.shape}, its image {shape}")
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)


def fit_depth_square(depth: np.ndarray, size: int) -> np.ndarray:
    """``depth`` through the resize and centre crop of ``croco.importers.images.fit_square``, nearest sample
    (depth must not be blended across edges)."""
    height, width = depth.shape
    transform, _ = square_crop_transform(width, height, size)
    centres = np.arange(size) + 0.5
    columns = np.clip(np.floor((centres - transform[0, 2]) / transform[0, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.floor((centres - transform[1, 2]) / transform[1, 1]).astype(int), 0, height - 1)
    return depth[np.ix_(rows, columns)]


class HabitatReleaseImporter(Importer):
    name = "habitat_release"

    def __init__(self, settings: ImportSettings, *, exclude: Sequence[str] = ("val", "minival")) -> None:
        exclude = [str(e) for e in exclude]
        super().__init__(settings, exclude=exclude)
        self.exclude = set(exclude)

    def check_input(self) -> None:
        source = self.settings.input
        if not source.is_dir():
            raise FileNotFoundError(
                f"input={source}: not a folder (expected the released habitat_release/ folder of scene folders)"
            )

    def scan(self) -> Iterator[ReleasePairItem | Skipped]:
        root = self.settings.input
        excluded = 0
        for folder, folders, files in os.walk(root):
            for name in [f for f in folders if f in self.exclude]:  # held out: counted, not walked further
                excluded += sum(1 for _ in Path(folder, name).rglob(f"*{VIEW_SUFFIX}"))
            folders[:] = sorted(f for f in folders if f not in self.exclude)
            relative = Path(folder).relative_to(root)
            for name in sorted(files):
                if not name.endswith(VIEW_SUFFIX):
                    continue
                prefix = str(Path(folder) / name[: -len(VIEW_SUFFIX)])
                second = view_files(prefix, 2)[0]
                if not second.exists():
                    yield Skipped(MISSING_PARTNER, f"{Path(folder) / name}: no {second.name}")
                    continue
                scene = relative.as_posix() if relative.parts else root.name
                yield ReleasePairItem(name=prefix, scene=scene, prefix=prefix)
        if excluded:
            print(
                f"[import] left out {excluded} pairs in folders named {sorted(self.exclude)} (exclude=)",
                flush=True,
            )

    def load(self, item: ReleasePairItem) -> PairRecord:
        size = self.settings.resolution
        views = []
        for view in (1, 2):
            image_file, depth_file, camera_file = view_files(item.prefix, view)
            image = read_image(image_file)
            camera = read_camera(camera_file)
            depth = read_depth(depth_file, image.shape[:2])
            views.append((image, camera, depth))
        (_, camera1, depth1), (_, camera2, depth2) = views
        covis: tuple[float | None, float | None] = (None, None)
        if camera1 is not None and camera2 is not None and depth1 is not None and depth2 is not None:
            covis = covisibility(depth1, depth2, camera1[0], camera2[0], camera1[1], camera2[1])
        images, Ks, depths = [], [], []
        for image, camera, depth in views:
            fitted, K = fit_square(image, None if camera is None else camera[0], size)
            images.append(fitted)
            Ks.append(K)
            if depth is None:
                depth = np.full(image.shape[:2], np.nan, dtype=np.float32)  # unknown
            depths.append(fit_depth_square(depth, size) if depth.shape != (size, size) else depth)
        return PairRecord(
            image1=images[0],
            image2=images[1],
            K1=Ks[0],
            K2=Ks[1],
            pose1=None if camera1 is None else camera1[1],
            pose2=None if camera2 is None else camera2[1],
            covis12=covis[0],
            covis21=covis[1],
            scene=item.scene,
            depth1=depths[0] if self.settings.depth else None,
            depth2=depths[1] if self.settings.depth else None,
        )


IMPORTER = HabitatReleaseImporter
