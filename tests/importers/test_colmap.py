"""source=colmap: the reader and writer of COLMAP models, geometry of the imported views (a known 3-D point lands on
its marker after undistortion, resize and crop), pair selection by shared 3-D points, sparse depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from croco.data.shards import ShardReader
from croco.importers.base import ImportSettings, import_pairs
from croco.importers.colmap import ColmapImporter, undistort_image
from croco.importers.colmap_io import (
    Camera,
    ColmapFormatError,
    quaternion_to_rotation,
    read_model,
    rotation_to_quaternion,
)
from croco.importers.images import square_crop_transform
from tests.importers.scenes import (
    CENTRE,
    HEIGHT,
    MARKER,
    WIDTH,
    camera_params,
    focal_xy,
    make_colmap_project,
    project,
    spot_centre,
)

SIZE = 64


def _import(root: Path, out: Path, **settings) -> ShardReader:
    importer = ColmapImporter(ImportSettings(input=root, resolution=SIZE, **settings))
    import_pairs(importer, out, progress=False)
    (shard,) = sorted(out.glob("*.h5"))
    return ShardReader(shard)


def _project_with_shard(K: np.ndarray, pose: np.ndarray, point: np.ndarray) -> np.ndarray:
    camera = np.linalg.inv(pose) @ np.append(point, 1.0)
    pixel = K @ camera[:3]
    return pixel[:2] / pixel[2]


# ----------------------------------------------------------------------------------------- reader and writer


@pytest.mark.parametrize("binary", [True, False])
def test_written_model_reads_back_identically(tmp_path, binary):
    project_ = make_colmap_project(tmp_path, "OPENCV", binary=binary)
    ext = ".bin" if binary else ".txt"
    assert sorted(p.name for p in (tmp_path / "sparse" / "0").iterdir()) == [
        f"cameras{ext}", f"images{ext}", f"points3D{ext}"
    ]  # fmt: skip
    read = read_model(tmp_path / "sparse" / "0")
    written = project_.model
    assert read.cameras.keys() == written.cameras.keys()
    camera = read.cameras[1]
    assert (camera.model, camera.width, camera.height) == ("OPENCV", WIDTH, HEIGHT)
    np.testing.assert_array_equal(camera.params, camera_params("OPENCV"))
    assert read.images.keys() == written.images.keys()
    for image_id, image in written.images.items():
        back = read.images[image_id]
        assert (back.name, back.camera_id) == (image.name, image.camera_id)
        np.testing.assert_array_equal(back.qvec, image.qvec)
        np.testing.assert_array_equal(back.tvec, image.tvec)
        np.testing.assert_array_equal(back.xys, image.xys)
        np.testing.assert_array_equal(back.point3D_ids, image.point3D_ids)
    assert read.points3D.keys() == written.points3D.keys()
    for point_id, point in written.points3D.items():
        back = read.points3D[point_id]
        np.testing.assert_array_equal(back.xyz, point.xyz)
        np.testing.assert_array_equal(back.rgb, point.rgb)
        np.testing.assert_array_equal(back.image_ids, point.image_ids)
        np.testing.assert_array_equal(back.point2D_idxs, point.point2D_idxs)


def test_quaternions_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.normal(size=4)
        q = q / np.linalg.norm(q) * np.sign(q[0])
        rotation = quaternion_to_rotation(q)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rotation_to_quaternion(rotation), q, atol=1e-9)
    # a quarter turn about z: x -> y
    np.testing.assert_allclose(quaternion_to_rotation([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]) @ [1, 0, 0],
                               [0, 1, 0], atol=1e-12)  # fmt: skip


def test_damaged_model_file_is_one_line_naming_it(tmp_path):
    make_colmap_project(tmp_path, binary=True)
    images = tmp_path / "sparse" / "0" / "images.bin"
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(ColmapFormatError, match=r"images\.bin: file ends early") as info:
        read_model(tmp_path / "sparse" / "0")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(("model", "binary"), [("PINHOLE", True), ("SIMPLE_RADIAL", False), ("OPENCV", True)])
def test_a_known_point_lands_on_its_marker_in_the_imported_views(tmp_path, model, binary):
    """The marker is drawn where the lens puts MARKER; after undistortion, resize to 64 and the centre crop, the
    shard's K and pose must project MARKER onto it (views 1 and 2 of the pair of images 1 and 2)."""
    make_colmap_project(tmp_path / "project", model, binary=binary, images=(1, 2))
    reader = _import(tmp_path / "project", tmp_path / "out")
    assert len(reader) == 1
    pair = reader.read_record(0)
    transform, _ = square_crop_transform(WIDTH, HEIGHT, SIZE)
    for view, (image, K, pose) in enumerate(
        ((pair.image1, pair.K1, pair.pose1), (pair.image2, pair.K2, pair.pose2)), 1
    ):
        expected = _project_with_shard(K, pose, MARKER)
        found = spot_centre(image)
        assert np.linalg.norm(found - expected) < 0.3, (view, found, expected)
        # the pinhole K, moved by the resize and crop
        fx, fy = focal_xy(model)
        np.testing.assert_allclose(K, transform @ [[fx, 0, CENTRE[0]], [0, fy, CENTRE[1]], [0, 0, 1]])
        if model != "PINHOLE":  # the test can fail: without undistortion the marker is elsewhere
            distorted = (transform @ np.append(project(model, view, MARKER)[0], 1.0))[:2]
            assert np.linalg.norm(distorted - expected) > 1.0


def test_pose_is_camera_to_world_in_opencv_axes(tmp_path):
    make_colmap_project(tmp_path / "project", images=(1, 2))
    pair = _import(tmp_path / "project", tmp_path / "out").read_record(0)
    # camera 2 sits at x = 0.3, y = 0.05 and is turned by 0.04 rad about y (see tests/importers/scenes.py)
    np.testing.assert_allclose(pair.pose1, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(pair.pose2[:3, 3], [0.3, 0.05, 0.0], atol=1e-12)
    forward = pair.pose2[:3, :3] @ [0, 0, 1]
    np.testing.assert_allclose(forward, [np.sin(0.04), 0, np.cos(0.04)], atol=1e-12)


def test_undistortion_maps_a_grid_to_its_pinhole_positions():
    camera = Camera(1, "SIMPLE_RADIAL", WIDTH, HEIGHT, camera_params("SIMPLE_RADIAL"))
    f, cx, cy, k = camera.params
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    x, y = (cols - cx) / f, (rows - cy) / f
    # a smooth pattern painted in undistorted coordinates, warped by the lens: undistortion must bring it back
    pattern = lambda x, y: 128 + 100 * np.sin(6 * x) * np.cos(5 * y)
    # source pixel (cols, rows) shows the ray whose distorted normalised position is (x, y): invert numerically
    xu, yu = x.copy(), y.copy()
    for _ in range(30):
        r2 = xu * xu + yu * yu
        xu, yu = x / (1 + k * r2), y / (1 + k * r2)
    image[...] = np.clip(pattern(xu, yu), 0, 255).astype(np.uint8)[..., None]
    out = undistort_image(image, camera)[..., 0].astype(np.float64)
    inner = (slice(15, HEIGHT - 15), slice(20, WIDTH - 20))
    error = np.abs(out - pattern(x, y))[inner]
    assert error.mean() < 1.5 and error.max() < 8
    moved = np.abs(image[..., 0].astype(np.float64) - pattern(x, y))[inner]
    assert moved.mean() > 5 * error.mean() and moved.max() > 15  # the lens did move it


# ----------------------------------------------------------------------------------------- pairs and depth


def test_pairs_follow_shared_points_and_the_overlap_range(tmp_path):
    make_colmap_project(tmp_path)

    def pairs(low: float, high: float = 1.0) -> dict[tuple[int, int], tuple[float, float]]:
        importer = ColmapImporter(
            ImportSettings(input=tmp_path, resolution=SIZE, overlap_min=low, overlap_max=high)
        )
        return {(item.image1, item.image2): (item.covis12, item.covis21) for item in importer.scan()}

    # observed ids: 1: 0-59, 2: 20-79, 3: 50-99, 4: 90-99 (tests/importers/scenes.py)
    expected = {
        (1, 2): (40 / 60, 40 / 60),
        (1, 3): (10 / 60, 10 / 50),
        (2, 3): (30 / 60, 30 / 50),
        (3, 4): (0.2, 1.0),
    }
    found = pairs(0.1)
    assert found.keys() == expected.keys()
    for key, covis in expected.items():
        assert found[key] == pytest.approx(covis)
    assert set(pairs(0.3)) == {(1, 2), (2, 3)}
    assert set(pairs(0.1, 0.3)) == {(1, 3), (3, 4)}
    reader = _import(tmp_path, tmp_path / "out", overlap_min=0.3)
    np.testing.assert_allclose(reader.overlap, [40 / 60, 0.5], rtol=1e-6)
    assert reader.scene == [tmp_path.name] * 2


def test_sparse_depth_holds_the_observed_points_and_nan_elsewhere(tmp_path):
    project_ = make_colmap_project(tmp_path / "project", images=(1, 2))
    reader = _import(tmp_path / "project", tmp_path / "out", depth=True)
    pair = reader.read_record(0)
    ids = np.arange(0, 60)  # observed by image 1
    camera = (np.linalg.inv(pair.pose1) @ np.c_[project_.points[ids], np.ones(len(ids))].T).T[:, :3]
    pixels = (pair.K1 @ camera.T).T
    u, v = (
        np.floor(pixels[:, 0] / pixels[:, 2]).astype(int),
        np.floor(pixels[:, 1] / pixels[:, 2]).astype(int),
    )
    depth = pair.depth1
    assert depth.shape == (SIZE, SIZE)
    occupied = set(zip(v.tolist(), u.tolist()))
    assert int(np.isfinite(depth).sum()) == len(occupied)
    for row, col, z in zip(v, u, camera[:, 2]):
        nearest = camera[(v == row) & (u == col), 2].min()
        assert depth[row, col] == pytest.approx(nearest, rel=1e-3)  # float16 storage
        assert depth[row, col] <= z * (1 + 1e-3)


def test_missing_image_and_unsupported_camera_are_counted(tmp_path, capsys):
    project_ = make_colmap_project(tmp_path, images=(1, 2, 3))
    (tmp_path / "images" / "view_3.png").unlink()
    importer = ColmapImporter(ImportSettings(input=tmp_path, resolution=SIZE, overlap_min=0.1))
    summary = import_pairs(importer, tmp_path / "out", progress=False)
    assert summary.imported == 1 and summary.skipped == {"missing image file": 1}
    assert f"skipped (missing image file): {tmp_path / 'images' / 'view_3.png'}" in capsys.readouterr().out
    project_.model.cameras[1] = Camera(
        1, "OPENCV_FISHEYE", WIDTH, HEIGHT, np.array([100.0, 100, 80, 60, 0, 0, 0, 0])
    )
    from croco.importers.colmap_io import write_model

    write_model(project_.model, tmp_path / "fisheye" / "sparse" / "0")
    (tmp_path / "fisheye" / "images").symlink_to(tmp_path / "images")
    fisheye = ColmapImporter(ImportSettings(input=tmp_path / "fisheye", resolution=SIZE))
    skipped = [entry.reason for entry in fisheye.scan()]
    assert skipped == ["unsupported camera model"] * 3  # the camera is checked before the file
