"""Contact-sheet preview: writes a PNG of the expected size, atomically, and refuses bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from croco.data.preview import main, pick_pairs, sheet_size
from croco.data.shards import ShardError, ShardReader


def test_preview_writes_sheet_of_expected_size(shard_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs" / "sheet.png"
    assert main([str(shard_folder), "--out", str(out), "--pairs", "5", "--cols", "2", "--size", "40"]) == out
    with Image.open(out) as sheet:
        assert sheet.size == sheet_size(5, 2, 40)
        pixels = np.asarray(sheet.convert("RGB"))
    assert sheet_size(5, 2, 40) == (2 * (80 + 2 + 6) + 6, 3 * (40 + 16 + 6) + 6)
    assert pixels.std() > 10  # images were pasted, not just the background
    assert [p.name for p in out.parent.iterdir()] == ["sheet.png"]  # no temporary file left behind


def test_pick_pairs_is_distinct_and_seeded(shard_folder: Path) -> None:
    readers = [ShardReader(p) for p in sorted(shard_folder.glob("*.h5"))]
    picks = pick_pairs(readers, 100, seed=0)
    assert len(picks) == 48  # capped at what exists, each pair once
    assert len({(str(r.path), i) for r, i in picks}) == 48
    assert [(r.path, i) for r, i in pick_pairs(readers, 6, 1)] == [
        (r.path, i) for r, i in pick_pairs(readers, 6, 1)
    ]


def test_preview_refuses_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="shard folder does not exist"):
        main([str(tmp_path / "nothing"), "--out", str(tmp_path / "s.png")])
    assert not (tmp_path / "s.png").exists()
