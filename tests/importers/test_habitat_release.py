"""source=habitat_release: a release folder built here (JPEG pairs, half-float EXR depth, camera JSON,
metadata.json). Geometry: a 3-D point projected with the imported K and pose lands on the mark painted where
the release's camera sees it, also after a resize; co-visibility from depth; skipped files; held-out folders;
the EXR reader against files of the OpenEXR layout (NONE / ZIP)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from croco.data.shards import ShardReader, list_shards
from croco.geometry.cameras import intrinsics_from_hfov, look_at, make_pose
from croco.importers.base import Skipped, import_pairs, settings_from
from croco.importers.exr import read_exr, read_exr_channel, write_exr
from croco.importers.habitat_release import HabitatReleaseImporter, fit_depth_square
from tests.importers.scenes import tiny_pretraining_overrides

SIZE = 32
POINT = np.array([0.4, 1.3, 3.0])  # a world point in front of both cameras


def _project(K: np.ndarray, pose: np.ndarray, point: np.ndarray) -> np.ndarray:
    camera = pose[:3, :3].T @ (point - pose[:3, 3])
    uv = K @ camera
    return uv[:2] / uv[2]


def _write_view(prefix: Path, view: int, K, pose, depth, *, mark: bool = True) -> None:
    image = np.full((SIZE, SIZE, 3), 40, dtype=np.uint8)
    if mark:
        u, v = np.floor(_project(K, pose, POINT)).astype(int)
        image[v - 1 : v + 2, u - 1 : u + 2] = 255  # a 3x3 white mark centred on the point's pixel
    Image.fromarray(image).save(f"{prefix}_{view}.jpeg", quality=95)
    write_exr(f"{prefix}_{view}_depth.exr", {"Y": depth.astype(np.float16)}, compression="ZIP")
    Path(f"{prefix}_{view}_camera_params.json").write_text(json.dumps(
        {"camera_intrinsics": K.tolist(), "R_cam2world": pose[:3, :3].tolist(), "t_cam2world": pose[:3, 3].tolist()}
    ))  # fmt: skip


@pytest.fixture
def release(tmp_path) -> Path:
    """Two scenes (a ScanNet rescan and an HM3D val scene) in the released layout; cameras ~3 m from a wall."""
    root = tmp_path / "habitat_release"
    K = intrinsics_from_hfov(60.0, SIZE)
    eye = np.array([0.0, 1.5, 0.0])
    pose1 = make_pose(look_at(eye, eye + [0.1, -0.05, 1.0]), eye)
    pose2 = pose1.copy()
    pose2[:3, 3] += 0.2 * pose1[:3, 0]  # 20 cm to the right of view 1, same orientation
    for scene in ("scannet/scene0000_01", "hm3d/val/00800-TEEsavR23oF"):
        folder = root / scene
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text(json.dumps({"scene": scene, "resolution": [SIZE, SIZE]}))
        for view, pose in ((1, pose1), (2, pose2)):
            # a wall at world z = 3: the z-depth of each pixel (rays with camera z = 1 reach it at t = depth)
            rays = np.linalg.solve(K, np.stack([*np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5),
                                                np.ones((SIZE, SIZE))]).reshape(3, -1))  # fmt: skip
            world = pose[:3, :3] @ rays
            depth = ((3.0 - pose[2, 3]) / world[2]).reshape(SIZE, SIZE)
            _write_view(folder / "00000000", view, K, pose, depth)
    (root / "scannet/scene0000_01/00000001_1.jpeg").write_bytes((root / "scannet/scene0000_01/00000000_1.jpeg").read_bytes())
    return root


def test_the_imported_cameras_project_a_point_onto_its_mark(release):
    importer = HabitatReleaseImporter(settings_from(release, resolution=SIZE, depth=True))
    entries = list(importer.scan())
    items = [e for e in entries if not isinstance(e, Skipped)]
    skipped = [e for e in entries if isinstance(e, Skipped)]
    assert [i.scene for i in items] == ["scannet/scene0000_01"]  # hm3d/val is held out
    assert [s.reason for s in skipped] == ["missing partner"] and "00000001_2.jpeg" in skipped[0].detail
    record = importer.load(items[0])
    for view, K, pose in ((record.image1, record.K1, record.pose1), (record.image2, record.K2, record.pose2)):
        u, v = _project(K, pose, POINT)
        bright = np.argwhere(view.mean(axis=-1) > 150)
        centre = bright.mean(axis=0)  # (row, column) of the mark
        assert np.hypot(centre[1] - (np.floor(u) + 0.5), centre[0] - (np.floor(v) + 0.5)) < 0.75
    # depth is z-depth in metres and covisibility follows from the geometry: a 20 cm step at ~3 m moves the
    # wall ~1.9 px, so the 2 leftmost of 32 columns of view 1 leave view 2
    assert record.depth1.shape == (SIZE, SIZE) and abs(float(np.median(record.depth1)) - 3.0) < 0.05
    assert record.covis12 == pytest.approx(30 / 32, abs=0.035)
    assert record.covis21 == pytest.approx(30 / 32, abs=0.035)


def test_resizing_moves_k_and_depth_along(release):
    importer = HabitatReleaseImporter(settings_from(release, resolution=16, depth=True))
    item = next(e for e in importer.scan() if not isinstance(e, Skipped))
    record = importer.load(item)
    u, v = _project(record.K1, record.pose1, POINT)  # the half-size image's K
    bright = np.argwhere(record.image1.mean(axis=-1) > 100)
    assert np.hypot(bright[:, 1].mean() + 0.5 - u, bright[:, 0].mean() + 0.5 - v) < 1.0
    full = HabitatReleaseImporter(settings_from(release, resolution=SIZE, depth=True)).load(item)
    assert np.array_equal(record.depth1, full.depth1[1::2, 1::2])  # nearest samples of the full depth
    assert record.image1.shape == (16, 16, 3)


def test_import_writes_shards_with_the_split_scene_id_and_without_depth_when_asked(release, tmp_path, capsys):
    summary = import_pairs(HabitatReleaseImporter(settings_from(release, resolution=SIZE, depth=False)),
                           tmp_path / "out", progress=False)  # fmt: skip
    assert summary.imported == 1 and summary.skipped == {"missing partner": 1}
    assert "left out 1 pairs in folders named ['minival', 'val']" in capsys.readouterr().out
    (shard,) = list_shards(tmp_path / "out")
    reader = ShardReader(shard)
    assert list(reader.scene) == ["scannet/scene0000"]  # ScanNet's rescan suffix is not part of the split id
    assert "depth1" not in reader.fields
    summary = import_pairs(HabitatReleaseImporter(settings_from(release, resolution=SIZE), exclude=[]),
                           tmp_path / "all", progress=False)  # fmt: skip
    assert summary.imported == 2


def test_broken_files_are_skipped_with_their_name(release):
    folder = release / "scannet/scene0000_01"
    (folder / "00000000_2_camera_params.json").write_text('{"camera_intrinsics": [[1, 0], [0, 1]]}')
    (folder / "00000000_1_depth.exr").write_bytes(b"not an exr")
    importer = HabitatReleaseImporter(settings_from(release, resolution=SIZE, depth=True))
    item = next(e for e in importer.scan() if not isinstance(e, Skipped))
    from croco.importers.base import SkipPair

    with pytest.raises(SkipPair) as error:
        importer.load(item)
    assert error.value.reason == "unreadable depth" and "00000000_1_depth.exr" in error.value.detail
    (folder / "00000000_1_depth.exr").unlink()  # missing depth: unknown, so covisibility is unknown too
    with pytest.raises(SkipPair, match="R_cam2world"):
        importer.load(item)
    (folder / "00000000_2_camera_params.json").unlink()
    record = importer.load(item)
    assert record.K2 is None and record.pose2 is None and record.covis12 is None
    assert np.isnan(record.depth1).all() and np.isfinite(record.depth2).all()


@pytest.mark.parametrize("compression", ["NONE", "ZIP"])
def test_exr_round_trip_and_channel_choice(tmp_path, compression):
    rng = np.random.default_rng(0)
    depth = (rng.random((21, 19)) * 8).astype(np.float16)
    depth[:4] = 0
    write_exr(tmp_path / "d.exr", {"Y": depth}, compression=compression)
    assert np.array_equal(read_exr(tmp_path / "d.exr")["Y"], depth)
    colour = {"R": rng.random((5, 7)).astype(np.float32), "G": np.zeros((5, 7), np.float32)}
    write_exr(tmp_path / "c.exr", colour, compression=compression)
    assert np.array_equal(read_exr_channel(tmp_path / "c.exr"), colour["R"])
    (tmp_path / "bad.exr").write_bytes(b"\x76\x2f\x31\x01\x02\x00\x00\x00")
    with pytest.raises(ValueError, match=r"bad.exr: cannot read EXR"):
        read_exr(tmp_path / "bad.exr")


def test_depth_resize_is_nearest():
    depth = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.array_equal(fit_depth_square(depth, 2), depth[1::2, 1::2])


def test_tiny_pretraining_on_the_imported_release_is_one_data_override(release, tmp_path, compose_at, single_thread):
    """``python generate.py source=habitat_release input=...`` writes data/habitat_release; ``data=habitat_release``
    trains on it."""
    from croco.tasks.training import train

    out = tmp_path / "data" / "habitat_release"
    importer = HabitatReleaseImporter(settings_from(release, resolution=64), exclude=[])
    assert import_pairs(importer, out, progress=False).imported == 2
    cfg = compose_at(tiny_pretraining_overrides("habitat_release", 0.0), tmp_path)
    assert cfg.data.sources[0].path == str(out)
    assert math.isfinite(train(cfg)["train/loss"])
