"""Reading and writing COLMAP reconstructions (``cameras``, ``images``, ``points3D``; binary ``.bin`` or text
``.txt``), after the formats documented by COLMAP ("Output format" in its documentation, and
``scripts/python/read_write_model.py`` of the COLMAP repository). No pycolmap needed.

Conventions of the files: ``images`` store world-to-camera rotations as unit quaternions ``(qw, qx, qy, qz)``
and translations ``t``, so ``X_cam = R(q) @ X_world + t``, with camera axes x right, y down, z forward (OpenCV's);
pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``. Binary files are little-endian.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

# COLMAP's camera models: id -> (name, number of parameters)
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_IDS = {name: model_id for model_id, (name, _) in CAMERA_MODELS.items()}
MODEL_PARAMS = dict(CAMERA_MODELS.values())
MODEL_FILES = ("cameras", "images", "points3D")
_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("point3D_id", "<i8")])
_TRACK = np.dtype([("image_id", "<i4"), ("point2D_idx", "<i4")])


class ColmapFormatError(ValueError):
    """A model file that does not follow the format; the message is one line naming the file."""


@dataclass
class Camera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64, MODEL_PARAMS[model] values


@dataclass
class Image:
    id: int
    qvec: np.ndarray  # (4,) qw, qx, qy, qz: world-to-camera rotation
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str  # path relative to the image folder
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (N, 2) keypoints, pixels
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,), -1: none

    def world_to_camera(self) -> np.ndarray:
        """4x4 ``[R | t]``: world coordinates to this camera's (OpenCV axes)."""
        matrix = np.eye(4)
        matrix[:3, :3] = quaternion_to_rotation(self.qvec)
        matrix[:3, 3] = self.tvec
        return matrix


@dataclass
class Point3D:
    id: int
    xyz: np.ndarray  # (3,)
    rgb: np.ndarray  # (3,) uint8
    error: float
    image_ids: np.ndarray  # (M,) int32: the track
    point2D_idxs: np.ndarray  # (M,) int32


@dataclass
class Reconstruction:
    cameras: dict[int, Camera] = field(default_factory=dict)
    images: dict[int, Image] = field(default_factory=dict)
    points3D: dict[int, Point3D] = field(default_factory=dict)


def quaternion_to_rotation(qvec: np.ndarray) -> np.ndarray:
    """3x3 rotation of a (w, x, y, z) quaternion (normalised first)."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternion with w >= 0 of a 3x3 rotation (the inverse of ``quaternion_to_rotation``)."""
    m = np.asarray(rotation, dtype=np.float64)
    # the eigenvector of the largest eigenvalue of this symmetric matrix is the quaternion (robust everywhere)
    k = (
        np.array(
            [
                [m[0, 0] - m[1, 1] - m[2, 2], 0, 0, 0],
                [m[0, 1] + m[1, 0], m[1, 1] - m[0, 0] - m[2, 2], 0, 0],
                [m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], m[2, 2] - m[0, 0] - m[1, 1], 0],
                [m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1], m[0, 0] + m[1, 1] + m[2, 2]],
            ]
        )
        / 3.0
    )
    values, vectors = np.linalg.eigh(k)
    x, y, z, w = vectors[:, int(np.argmax(values))]
    quaternion = np.array([w, x, y, z])
    return quaternion if w >= 0 else -quaternion


# --------------------------------------------------------------------------------------------- reading


def find_model_files(folder: str | os.PathLike) -> tuple[Path, str] | None:
    """(folder, ext) of the model in ``folder``: ``.bin`` if all three binary files are there, else ``.txt``
    if all three text files are; None if neither is complete."""
    folder = Path(folder)
    for ext in (".bin", ".txt"):
        if all((folder / f"{name}{ext}").is_file() for name in MODEL_FILES):
            return folder, ext
    return None


def read_model(folder: str | os.PathLike) -> Reconstruction:
    """The reconstruction in ``folder`` (binary preferred, else text); ``ColmapFormatError`` naming the file
    when one is malformed, ``FileNotFoundError`` when the folder has no complete model."""
    found = find_model_files(folder)
    if found is None:
        raise FileNotFoundError(
            f"{folder}: no COLMAP model (expected cameras, images and points3D, all .bin or all .txt)"
        )
    path, ext = found
    readers = (
        (_read_cameras_bin, _read_images_bin, _read_points_bin)
        if ext == ".bin"
        else (_read_cameras_txt, _read_images_txt, _read_points_txt)
    )
    parts = []
    for name, reader in zip(MODEL_FILES, readers):
        file = path / f"{name}{ext}"
        try:
            parts.append(reader(file))
        except ColmapFormatError:
            raise
        except (struct.error, ValueError, IndexError, KeyError, UnicodeDecodeError) as error:
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ColmapFormatError(f"{file}: not a valid COLMAP {name}{ext} file ({text})") from None
    return Reconstruction(*parts)


def _read(handle: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ColmapFormatError(f"{handle.name}: file ends early (truncated?)")
    return struct.unpack(fmt, data)


def _check_end(handle: BinaryIO) -> None:
    if handle.read(1):
        raise ColmapFormatError(f"{handle.name}: unexpected bytes after the last record")


def _model_of(model_id: int, where: str) -> tuple[str, int]:
    if model_id not in CAMERA_MODELS:
        raise ColmapFormatError(f"{where}: unknown camera model id {model_id}")
    return CAMERA_MODELS[model_id]


def _read_cameras_bin(path: Path) -> dict[int, Camera]:
    cameras = {}
    with open(path, "rb") as handle:
        (count,) = _read(handle, "<Q")
        for _ in range(count):
            camera_id, model_id, width, height = _read(handle, "<iiQQ")
            name, n_params = _model_of(model_id, str(path))
            params = np.array(_read(handle, f"<{n_params}d"))
            cameras[camera_id] = Camera(camera_id, name, int(width), int(height), params)
        _check_end(handle)
    return cameras


def _read_images_bin(path: Path) -> dict[int, Image]:
    images = {}
    with open(path, "rb") as handle:
        (count,) = _read(handle, "<Q")
        for _ in range(count):
            image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = _read(handle, "<i7di")
            name = bytearray()
            while (char := handle.read(1)) != b"\x00":
                if not char:
                    raise ColmapFormatError(f"{path}: file ends inside an image name (truncated?)")
                name += char
            (n_points,) = _read(handle, "<Q")
            data = handle.read(n_points * _POINT2D.itemsize)
            if len(data) != n_points * _POINT2D.itemsize:
                raise ColmapFormatError(f"{path}: file ends early (truncated?)")
            points = np.frombuffer(data, dtype=_POINT2D)
            images[image_id] = Image(
                image_id,
                np.array([qw, qx, qy, qz]),
                np.array([tx, ty, tz]),
                camera_id,
                name.decode("utf-8"),
                np.stack([points["x"], points["y"]], axis=1),
                points["point3D_id"].astype(np.int64),
            )
        _check_end(handle)
    return images


def _read_points_bin(path: Path) -> dict[int, Point3D]:
    points = {}
    with open(path, "rb") as handle:
        (count,) = _read(handle, "<Q")
        for _ in range(count):
            point_id, x, y, z, r, g, b, error, track_length = _read(handle, "<Q3d3BdQ")
            data = handle.read(track_length * _TRACK.itemsize)
            if len(data) != track_length * _TRACK.itemsize:
                raise ColmapFormatError(f"{path}: file ends early (truncated?)")
            track = np.frombuffer(data, dtype=_TRACK)
            points[point_id] = Point3D(
                point_id,
                np.array([x, y, z]),
                np.array([r, g, b], dtype=np.uint8),
                error,
                track["image_id"].astype(np.int32),
                track["point2D_idx"].astype(np.int32),
            )
        _check_end(handle)
    return points


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that are not comments (``#``); empty lines are kept for images.txt,
    whose point line may be empty."""
    with open(path, encoding="utf-8") as handle:
        return [(n, line.rstrip("\r\n")) for n, line in enumerate(handle, 1) if not line.startswith("#")]


def _read_cameras_txt(path: Path) -> dict[int, Camera]:
    cameras = {}
    for number, line in _data_lines(path):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{path}:{number}"
        if fields[1] not in MODEL_PARAMS:
            raise ColmapFormatError(f"{where}: unknown camera model {fields[1]!r}")
        n_params = MODEL_PARAMS[fields[1]]
        if len(fields) != 4 + n_params:
            raise ColmapFormatError(
                f"{where}: {fields[1]} needs {n_params} parameters, got {len(fields) - 4}"
            )
        camera_id = int(fields[0])
        cameras[camera_id] = Camera(
            camera_id, fields[1], int(fields[2]), int(fields[3]), np.array([float(v) for v in fields[4:]])
        )
    return cameras


def _read_images_txt(path: Path) -> dict[int, Image]:
    images = {}
    lines = _data_lines(path)
    while lines and not lines[-1][1].strip():
        lines.pop()  # trailing empty lines; an empty points line inside the file is meaningful
    if len(lines) % 2:
        raise ColmapFormatError(f"{path}: expected two lines per image, got {len(lines)} lines")
    for (number, header), (_, point_line) in zip(lines[::2], lines[1::2]):
        fields = header.split(maxsplit=9)
        if len(fields) != 10:
            raise ColmapFormatError(f"{path}:{number}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        values = point_line.split()
        if len(values) % 3:
            raise ColmapFormatError(f"{path}:{number + 1}: points must be X Y POINT3D_ID triples")
        triples = np.array(values, dtype=np.float64).reshape(-1, 3)
        image_id = int(fields[0])
        images[image_id] = Image(
            image_id,
            np.array([float(v) for v in fields[1:5]]),
            np.array([float(v) for v in fields[5:8]]),
            int(fields[8]),
            fields[9],
            triples[:, :2].copy(),
            triples[:, 2].astype(np.int64),
        )
    return images


def _read_points_txt(path: Path) -> dict[int, Point3D]:
    points = {}
    for number, line in _data_lines(path):
        if not line.strip():
            continue
        fields = line.split()
        track = fields[8:]
        if len(fields) < 8 or len(track) % 2:
            raise ColmapFormatError(
                f"{path}:{number}: expected POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)..."
            )
        pairs = np.array(track, dtype=np.int64).reshape(-1, 2)
        point_id = int(fields[0])
        points[point_id] = Point3D(
            point_id,
            np.array([float(v) for v in fields[1:4]]),
            np.array([int(v) for v in fields[4:7]], dtype=np.uint8),
            float(fields[7]),
            pairs[:, 0].astype(np.int32),
            pairs[:, 1].astype(np.int32),
        )
    return points


# --------------------------------------------------------------------------------------------- writing


def write_model(model: Reconstruction, folder: str | os.PathLike, *, binary: bool = True) -> Path:
    """Write ``model`` into ``folder`` as ``cameras``, ``images`` and ``points3D`` (``.bin`` or ``.txt``);
    each file is written to a temporary name and renamed, so a reader never sees half a model file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".bin" if binary else ".txt"
    writers = (
        (_write_cameras_bin, _write_images_bin, _write_points_bin)
        if binary
        else (_write_cameras_txt, _write_images_txt, _write_points_txt)
    )
    for name, writer, part in zip(MODEL_FILES, writers, (model.cameras, model.images, model.points3D)):
        target = folder / f"{name}{ext}"
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
                writer(f, part)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
    return folder


def _write_cameras_bin(handle: BinaryIO, cameras: dict[int, Camera]) -> None:
    handle.write(struct.pack("<Q", len(cameras)))
    for camera in cameras.values():
        params = np.asarray(camera.params, dtype=np.float64)
        if len(params) != MODEL_PARAMS[camera.model]:
            raise ValueError(
                f"camera {camera.id}: {camera.model} needs {MODEL_PARAMS[camera.model]} parameters"
            )
        handle.write(struct.pack("<iiQQ", camera.id, MODEL_IDS[camera.model], camera.width, camera.height))
        handle.write(struct.pack(f"<{len(params)}d", *params))


def _write_images_bin(handle: BinaryIO, images: dict[int, Image]) -> None:
    handle.write(struct.pack("<Q", len(images)))
    for image in images.values():
        handle.write(struct.pack("<i7di", image.id, *image.qvec, *image.tvec, image.camera_id))
        handle.write(image.name.encode("utf-8") + b"\x00")
        points = np.zeros(len(image.point3D_ids), dtype=_POINT2D)
        points["x"], points["y"] = image.xys[:, 0], image.xys[:, 1]
        points["point3D_id"] = image.point3D_ids
        handle.write(struct.pack("<Q", len(points)))
        handle.write(points.tobytes())


def _write_points_bin(handle: BinaryIO, points3D: dict[int, Point3D]) -> None:
    handle.write(struct.pack("<Q", len(points3D)))
    for point in points3D.values():
        handle.write(struct.pack("<Q3d3Bd", point.id, *point.xyz, *(int(c) for c in point.rgb), point.error))
        track = np.zeros(len(point.image_ids), dtype=_TRACK)
        track["image_id"], track["point2D_idx"] = point.image_ids, point.point2D_idxs
        handle.write(struct.pack("<Q", len(track)))
        handle.write(track.tobytes())


def _write_cameras_txt(handle, cameras: dict[int, Camera]) -> None:
    handle.write("# Camera list with one line of data per camera:\n")
    handle.write("#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
    handle.write(f"# Number of cameras: {len(cameras)}\n")
    for camera in cameras.values():
        params = " ".join(repr(float(v)) for v in camera.params)
        handle.write(f"{camera.id} {camera.model} {camera.width} {camera.height} {params}\n")


def _write_images_txt(handle, images: dict[int, Image]) -> None:
    handle.write("# Image list with two lines of data per image:\n")
    handle.write("#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
    handle.write("#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
    handle.write(f"# Number of images: {len(images)}\n")
    for image in images.values():
        pose = " ".join(repr(float(v)) for v in (*image.qvec, *image.tvec))
        handle.write(f"{image.id} {pose} {image.camera_id} {image.name}\n")
        handle.write(
            " ".join(f"{float(x)!r} {float(y)!r} {int(i)}" for (x, y), i in zip(image.xys, image.point3D_ids))
            + "\n"
        )


def _write_points_txt(handle, points3D: dict[int, Point3D]) -> None:
    handle.write("# 3D point list with one line of data per point:\n")
    handle.write("#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
    handle.write(f"# Number of points: {len(points3D)}\n")
    for point in points3D.values():
        xyz = " ".join(repr(float(v)) for v in point.xyz)
        rgb = " ".join(str(int(c)) for c in point.rgb)
        track = " ".join(f"{int(i)} {int(j)}" for i, j in zip(point.image_ids, point.point2D_idxs))
        handle.write(f"{point.id} {xyz} {rgb} {float(point.error)!r} {track}".rstrip() + "\n")
