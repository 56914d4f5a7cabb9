"""source=folder and the import framework: pairs by file name or list, sidecar geometry, broken images and orphans
counted and reported, nothing half-written, resume, workers and cluster jobs give the same shards, one-line
errors from generate.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from croco.data.shards import ShardReader, is_unknown, list_shards
from croco.importers.base import ImportSettings, import_pairs, normalise_scene_id
from croco.importers.folder import FolderImporter
from croco.importers.images import fit_square, square_crop_transform
from tests.generate_app import compose_generate, generate_script
from tests.importers.scenes import write_pair_folder

SIZE = 48


def _importer(path: Path, **settings) -> FolderImporter:
    return FolderImporter(ImportSettings(input=path, resolution=SIZE, **settings))


def _records(folder: Path) -> list:
    return [ShardReader(p).read_record(i) for p in list_shards(folder) for i in range(len(ShardReader(p)))]


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _break(folder: Path) -> tuple[Path, Path]:
    """A truncated JPEG with its partner, and an image without a partner."""
    broken = folder / "scene0" / "broken_1.jpg"
    broken.write_bytes((folder / "scene0" / "p0_1.jpg").read_bytes()[:200])
    (folder / "scene0" / "broken_2.jpg").write_bytes((folder / "scene0" / "p0_1.jpg").read_bytes())
    orphan = folder / "scene1" / "orphan_2.webp"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(orphan)
    return broken, orphan


def test_pairs_are_found_by_name_and_geometry_is_unknown(tmp_path):
    write_pair_folder(tmp_path / "in", 5)
    summary = import_pairs(_importer(tmp_path / "in"), tmp_path / "out", pairs_per_shard=2, progress=False)
    assert summary.imported == 5 and not summary.skipped and summary.shards_written == 3
    records = _records(tmp_path / "out")
    assert sorted(r.scene for r in records) == ["scene0", "scene0", "scene1", "scene1", "scene2"]
    for record in records:
        assert record.image1.shape == (SIZE, SIZE, 3)
        for value in (record.K1, record.K2, record.pose1, record.pose2, record.covis12, record.covis21):
            assert is_unknown(value)
    expected, _ = fit_square(
        np.asarray(Image.open(tmp_path / "in" / "scene0" / "p0_2.png").convert("RGB")), None, SIZE
    )
    first = next(r for r in records if r.scene == "scene0")  # p0 comes first in its shard
    assert np.abs(first.image2.astype(int) - expected.astype(int)).mean() < 8  # JPEG in the shard
    assert np.abs(first.image1.astype(int) - expected.astype(int)).mean() > 30  # another picture
    assert ShardReader(list_shards(tmp_path / "out")[0]).attrs["source"] == "folder"


def test_broken_image_and_orphan_are_counted_reported_and_leave_nothing(tmp_path, capsys):
    write_pair_folder(tmp_path / "in", 3)
    broken, orphan = _break(tmp_path / "in")
    summary = import_pairs(_importer(tmp_path / "in"), tmp_path / "out", pairs_per_shard=10, progress=False)
    assert summary.imported == 3
    assert summary.skipped == {"missing partner": 1, "unreadable image": 1}
    out = capsys.readouterr().out
    assert f"skipped (missing partner): {orphan}: no orphan_1 image" in out
    assert f"skipped (unreadable image): {broken}: " in out
    assert "skipped 2 (1 missing partner, 1 unreadable image)" in out
    assert len(_records(tmp_path / "out")) == 3 and _temporaries(tmp_path / "out") == []
    # the skip counts are stored with the shard: a rerun reports them again
    assert ShardReader(list_shards(tmp_path / "out")[0]).attrs["import_stats"]["skipped"] == {
        "unreadable image": 1
    }


def test_rerun_imports_nothing_new_and_a_changed_input_is_refused(tmp_path, capsys):
    write_pair_folder(tmp_path / "in", 5)
    import_pairs(_importer(tmp_path / "in"), tmp_path / "out", pairs_per_shard=2, progress=False)
    times = {p.name: p.stat().st_mtime_ns for p in list_shards(tmp_path / "out")}
    capsys.readouterr()
    again = import_pairs(_importer(tmp_path / "in"), tmp_path / "out", pairs_per_shard=2, progress=False)
    assert (again.imported, again.shards_written, again.shards_kept, again.kept_pairs) == (0, 0, 3, 5)
    assert "3 finished and kept, 0 to write" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in list_shards(tmp_path / "out")} == times
    # a lost shard is written again, the others kept
    (tmp_path / "out" / "shard-00001.h5").unlink()
    assert (
        import_pairs(_importer(tmp_path / "in"), tmp_path / "out", pairs_per_shard=2, progress=False).imported
        == 2
    )
    for view, ext in ((1, "jpg"), (2, "png")):  # a new pair sorted first moves the items of every shard
        (tmp_path / "in" / "scene0" / f"a_{view}.{ext}").write_bytes(
            (tmp_path / "in" / "scene0" / f"p0_{view}.{ext}").read_bytes()
        )
    with pytest.raises(
        ValueError, match=r"shard-00000\.h5: existing shard has items_digest=.*the input changed"
    ):
        import_pairs(_importer(tmp_path / "in"), tmp_path / "out", pairs_per_shard=2, progress=False)
    with pytest.raises(ValueError, match=r"shard-00000\.h5: existing shard has import_settings="):
        import_pairs(
            FolderImporter(ImportSettings(tmp_path / "in", resolution=32)),
            tmp_path / "out",
            pairs_per_shard=2,
        )


def test_workers_and_cluster_jobs_write_the_same_shards(tmp_path):
    write_pair_folder(tmp_path / "in", 5)
    _break(tmp_path / "in")
    import_pairs(_importer(tmp_path / "in"), tmp_path / "one", pairs_per_shard=2, progress=False)
    import_pairs(_importer(tmp_path / "in"), tmp_path / "pool", pairs_per_shard=2, workers=2, progress=False)
    for job in range(2):
        import_pairs(_importer(tmp_path / "in"), tmp_path / "jobs", pairs_per_shard=2, num_jobs=2, job_index=job,
                     progress=False)  # fmt: skip
    reference = _records(tmp_path / "one")
    assert len(reference) == 5
    for other in ("pool", "jobs"):
        assert [p.name for p in list_shards(tmp_path / other)] == [
            p.name for p in list_shards(tmp_path / "one")
        ]
        for mine, theirs in zip(reference, _records(tmp_path / other), strict=True):
            assert mine.scene == theirs.scene
            np.testing.assert_array_equal(mine.image1, theirs.image1)
            np.testing.assert_array_equal(mine.image2, theirs.image2)
    assert sorted(p.name for p in (tmp_path / "jobs").glob(".lock*")) == [
        ".lock-job-0-of-2",
        ".lock-job-1-of-2",
    ]


def test_list_file_and_sidecar_geometry(tmp_path):
    firsts = write_pair_folder(tmp_path / "in", 2, size=(90, 120))
    K = np.array([[100.0, 0, 61.0], [0, 100.0, 44.0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    sidecar = {"K1": K.tolist(), "K2": K.tolist(), "pose1": np.eye(4).tolist(), "pose2": pose.tolist(),
               "covis12": 0.7, "covis21": 0.6, "scene": "scene0042_02"}  # fmt: skip
    (firsts[0].parent / "p0_1.json").write_text(json.dumps(sidecar))
    (firsts[1].parent / "p1_1.json").write_text('{"K1": [[1, 0], [0, 1]]}')
    listing = tmp_path / "pairs.txt"
    listing.write_text(
        "# image1 image2 [scene]\n"
        f"in/scene0/p0_1.jpg, in/scene0/p0_2.png\n"
        f"{firsts[1]} {firsts[1].with_name('p1_2.png')} my_room\n"
        "in/scene0/p0_1.jpg in/scene0/missing.png\n"
        "just_one_field.jpg\n"
    )
    summary = import_pairs(_importer(listing), tmp_path / "out", progress=False)
    assert summary.imported == 1
    assert summary.skipped == {"missing partner": 1, "unreadable line": 1, "invalid sidecar": 1}
    (record,) = _records(tmp_path / "out")
    transform, _ = square_crop_transform(120, 90, SIZE)
    np.testing.assert_allclose(record.K1, transform @ K)
    np.testing.assert_allclose(record.pose2, pose)
    assert (record.covis12, record.covis21) == pytest.approx((0.7, 0.6))
    assert record.scene == "scene0042"  # the ScanNet rescan suffix is dropped for the split


def test_scene_ids_drop_the_scannet_rescan_suffix():
    assert normalise_scene_id("scene0001_00") == normalise_scene_id("scene0001_01") == "scene0001"
    assert normalise_scene_id("scans/scene0707_02/color") == "scans/scene0707/color"
    assert normalise_scene_id("scene12345_01") == "scene12345_01"  # not a ScanNet id
    assert normalise_scene_id("kitchen_01") == "kitchen_01"


# ----------------------------------------------------------------------------------------- generate.py


def _compose(*overrides: str):
    return compose_generate("resolution=32", "progress=false", *overrides)


def test_generate_py_imports_and_bad_input_is_one_line(tmp_path, capsys):
    script = generate_script()
    write_pair_folder(tmp_path / "in", 2)
    assert script.run(_compose("source=folder", f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}")) == 0
    assert len(_records(tmp_path / "out")) == 2
    capsys.readouterr()
    (tmp_path / "plain").mkdir()
    (tmp_path / "photo.jpg").write_bytes(b"")
    cases = {
        ("source=folder",): "error: input: source=folder imports existing data; set input=<folder or file>",
        ("source=folder", f"input={tmp_path / 'nothing'}"): f"error: input={tmp_path / 'nothing'}: does not exist",
        ("source=folder", f"input={tmp_path / 'photo.jpg'}"): f"error: input={tmp_path / 'photo.jpg'}: an image",
        ("source=folder", f"input={tmp_path / 'plain'}"): f"error: input={tmp_path / 'plain'}: no pair found",
        ("source=colmap", f"input={tmp_path / 'plain'}"): f"error: input={tmp_path / 'plain'}: no COLMAP model",
        ("source=colmap", f"input={tmp_path / 'photo.jpg'}"): f"error: input={tmp_path / 'photo.jpg'}: expected a COLMAP",
        ("source=colmap", f"input={tmp_path / 'in'}", "+source.options.colour=1"): "error: source.options: unknown key",
    }  # fmt: skip
    for overrides, start in cases.items():
        assert script.run(_compose(*overrides, f"out={tmp_path / 'bad'}")) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), (overrides, lines)
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("*.h5"))
