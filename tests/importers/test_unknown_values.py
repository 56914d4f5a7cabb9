"""Unknown values in the shard schema (version 3): NaN markers written and read back, older shards still read,
the overlap filter keeps (and counts) pairs of unknown overlap, and a tiny training runs on an imported folder
with one data override."""

from __future__ import annotations

import logging
import math

import h5py
import numpy as np
import pytest

from croco.data.index import PairSource, build_index
from croco.data.shards import SCHEMA_VERSION, PairRecord, ShardReader, ShardWriter, is_unknown
from croco.importers.base import ImportSettings, import_pairs
from croco.importers.colmap import ColmapImporter
from croco.importers.folder import FolderImporter
from tests.importers.scenes import make_colmap_project, tiny_pretraining_overrides, write_pair_folder

SIZE = 32


def _image(value: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), value, dtype=np.uint8)


def _unknown_record(scene: str, **known) -> PairRecord:
    fields = {"K1": None, "K2": None, "pose1": None, "pose2": None, "covis12": None, "covis21": None}
    return PairRecord(_image(10), _image(20), scene=scene, **{**fields, **known})


def test_unknown_values_are_nan_in_the_shard_and_read_back(tmp_path):
    K = np.array([[30.0, 0, 16], [0, 30, 16], [0, 0, 1]])
    depth = np.full((SIZE, SIZE), np.nan, np.float32)
    depth[3, 4] = 2.5
    path = tmp_path / "a.h5"
    with ShardWriter(path, source="unit", resolution=(SIZE, SIZE)) as writer:
        writer.add(_unknown_record("s0", K1=K, covis12=0.4, depth1=depth, depth2=depth))
        writer.add(_unknown_record("s1", depth1=depth, depth2=depth))
    reader = ShardReader(path)
    assert reader.attrs["schema_version"] == SCHEMA_VERSION == 3
    first, second = reader.read_record(0), reader.read_record(1)
    np.testing.assert_array_equal(first.K1, K)
    assert is_unknown(first.K2) and is_unknown(first.pose1) and is_unknown(first.covis21)
    assert first.covis12 == pytest.approx(0.4) and math.isnan(first.overlap)
    assert np.isnan(reader.overlap).all()  # min(0.4, unknown) is unknown
    assert all(is_unknown(v) for v in (second.K1, second.K2, second.pose1, second.pose2, second.covis12))
    assert first.depth1[3, 4] == 2.5 and int(np.isnan(first.depth1).sum()) == SIZE * SIZE - 1
    assert not is_unknown(np.zeros(3)) and not is_unknown(0.0) and is_unknown(float("nan"))


def test_a_partly_unknown_matrix_is_refused_with_one_line(tmp_path):
    K = np.eye(3)
    K[0, 2] = np.nan
    with ShardWriter(tmp_path / "a.h5", source="unit", resolution=(SIZE, SIZE)) as writer:
        with pytest.raises(ValueError, match=r"a\.h5: pair 0: K1 must be a finite \(3, 3\) matrix \(or None"):
            writer.add(_unknown_record("s", K1=K))
        with pytest.raises(ValueError, match=r"covis21 must be a fraction in \[0, 1\] \(or None: unknown\)"):
            writer.add(_unknown_record("s", covis21=1.5))
        writer.add(_unknown_record("s"))


def test_version_2_shards_still_read(tmp_path):
    path = tmp_path / "old.h5"
    with ShardWriter(path, source="unit", resolution=(SIZE, SIZE)) as writer:
        writer.add(
            PairRecord(_image(1), _image(2), np.eye(3), np.eye(3), np.eye(4), np.eye(4), 0.5, 0.7, "s")
        )
    with h5py.File(path, "r+") as handle:
        handle.attrs["schema_version"] = 2
    reader = ShardReader(path)
    assert reader.attrs["schema_version"] == 2 and reader.read_record(0).overlap == pytest.approx(0.5)


def test_overlap_filter_keeps_and_counts_unknown_overlap(tmp_path):
    folder = tmp_path / "pairs"
    with ShardWriter(folder / "shard-00000.h5", source="unit", resolution=(SIZE, SIZE)) as writer:
        for i, covis in enumerate([0.1, 0.6, None, None, 0.9]):
            writer.add(_unknown_record(f"s{i}", covis12=covis, covis21=covis))
    train, val, report = build_index([PairSource(folder)], overlap_min=0.5, overlap_max=0.8, val_fraction=0.0)
    assert sorted(train.local.tolist()) == [1, 2, 3] and len(val) == 0
    assert report.unknown_overlap == 2 and report.per_source[str(folder)]["unknown_overlap"] == 2
    assert report.dropped_train == 2
    assert "2 pairs of unknown overlap kept unfiltered" in report.lines()[0]
    _, _, known_only = build_index([PairSource(folder)], 0.0, 1.0, 0.0)
    assert known_only.unknown_overlap == 2 and known_only.train == 5


@pytest.mark.parametrize("kind", ["folder", "colmap"])
def test_tiny_training_on_an_imported_folder_is_one_data_override(
    tmp_path, compose_at, single_thread, caplog, kind
):
    """``python generate.py source=<kind> input=...`` writes data/<kind>; ``data=<kind>`` trains on it."""
    from croco.tasks.training import train

    settings = ImportSettings(input=tmp_path / "in", resolution=64, overlap_min=0.1)
    if kind == "folder":
        write_pair_folder(tmp_path / "in", 12, size=(72, 96))
        importer = FolderImporter(settings)
    else:
        make_colmap_project(tmp_path / "in")
        importer = ColmapImporter(settings)
    import_pairs(importer, tmp_path / "data" / kind, pairs_per_shard=4, progress=False)
    # folder: one of its three scenes (by hash) held out; colmap: one scene, all of it for training
    overrides = tiny_pretraining_overrides(kind, 0.5 if kind == "folder" else 0.0)
    cfg = compose_at(overrides, tmp_path)
    assert cfg.data.sources[0].path == f"{tmp_path}/data/{kind}"
    assert (
        cfg.data.overlap_min == 0.5
    )  # the experiment's filter: unknown overlaps pass it, known ones not all
    with caplog.at_level(logging.INFO, logger="croco.data.datamodule"):
        metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])
    if kind == "folder":
        assert math.isfinite(metrics["val/loss"])
        assert "12 pairs of unknown overlap kept unfiltered" in caplog.text  # reported once, at setup
        assert caplog.text.count("unknown overlap kept") == 1
    else:  # 4 pairs, overlaps 0.67, 0.17, 0.5, 0.2 (tests/importers/scenes.py): 2 dropped, none unknown
        assert "(overlap filter dropped 2 train / 0 val pairs)" in caplog.text
