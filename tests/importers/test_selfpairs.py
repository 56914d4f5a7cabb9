"""source=selfpairs: every view of a shard folder becomes a pair with itself, with that view's geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from croco.data.shards import PairRecord, ShardReader, ShardWriter, list_shards
from croco.importers.base import ImportSettings, import_pairs
from croco.importers.selfpairs import SelfPairImporter

SIZE = 32


def _pose(shift: float) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 3] = (shift, 0.0, 1.0)
    return pose


def _write_input(folder: Path) -> list[PairRecord]:
    rng = np.random.default_rng(0)
    K = np.array([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]])
    def image() -> np.ndarray:  # 8-pixel blocks: JPEG keeps them (its chroma is subsampled 2x2)
        return np.kron(rng.integers(0, 256, (SIZE // 8, SIZE // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)

    records = [
        PairRecord(image(), image(),
                   K, K * 1.5 + np.diag([0, 0, -0.5]), _pose(0.0), _pose(i + 1.0), 0.6, 0.7, f"scene{i}")
        for i in range(2)
    ]  # fmt: skip
    records.append(PairRecord(records[0].image1, records[0].image2, None, None, None, None, None, None, "scene9"))
    with ShardWriter(folder / "shard-00000.h5", source="test", resolution=(SIZE, SIZE), image_format="png") as out:
        for record in records:
            out.add(record)
    return records


def test_each_view_becomes_a_pair_with_itself_and_keeps_its_geometry(tmp_path: Path) -> None:
    source = _write_input(tmp_path / "in")
    importer = SelfPairImporter(ImportSettings(input=tmp_path / "in", resolution=SIZE))
    summary = import_pairs(importer, tmp_path / "out", pairs_per_shard=4, jpeg_quality=100, progress=False)
    assert summary.imported == 2 * len(source)
    out = [ShardReader(p).read_record(i) for p in list_shards(tmp_path / "out") for i in range(len(ShardReader(p)))]
    for n, record in enumerate(out):
        original, view = source[n // 2], 1 + n % 2
        assert np.array_equal(record.image1, record.image2)
        own, other = (np.abs(record.image1.astype(int) - getattr(original, f"image{v}").astype(int)).mean()
                      for v in (view, 3 - view))  # fmt: skip
        assert own < 10 and 5 * own < other  # its own view, up to JPEG
        assert record.scene == original.scene
        K, pose = getattr(original, f"K{view}"), getattr(original, f"pose{view}")
        if K is None:  # unknown stays unknown
            assert np.isnan(record.K1).all() and np.isnan(record.pose2).all()
        else:
            assert np.allclose(record.K1, K) and np.allclose(record.K2, K)
            assert np.allclose(record.pose1, pose) and np.allclose(record.pose2, pose)
        assert record.covis12 == record.covis21 == 1.0


def test_a_folder_without_shards_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    importer = SelfPairImporter(ImportSettings(input=tmp_path / "empty", resolution=SIZE))
    with pytest.raises(FileNotFoundError, match=r"^input=.*empty: expected a folder of pair shards \(\*\.h5\)"):
        importer.check_input()
