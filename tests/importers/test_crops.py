"""source=crops: crop lists applied to images made here: where a known pixel lands after the crop, the resize
rule (bicubic / Lanczos) and image 2's quarter turns; scene ids, skipped lines, the shards written."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from croco.data.shards import ShardReader, list_shards
from croco.importers.base import Skipped, import_pairs, settings_from
from croco.importers.crops import CropsImporter, crop_and_resize, parse_crop_list, quarter_turn, turn
from tests.importers.scenes import tiny_pretraining_overrides

SIZE = 64


def _image(path: Path, width: int, height: int, marks: dict[tuple[int, int], tuple[int, int, int]]) -> None:
    """A dark gradient with 1-pixel marks at (x, y)."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x % 50, y % 50, (x + y) % 30], axis=-1).astype(np.uint8)
    for (u, v), colour in marks.items():
        image[v, u] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture
def release(tmp_path) -> Path:
    """The official layout: data/crop_metadata/MegaDepth/crops_release.txt + data/original_datasets/MegaDepth/."""
    images = tmp_path / "data/original_datasets/MegaDepth"
    _image(images / "0015/imgs/a.png", 300, 200, {(50, 30): (255, 0, 0)})
    _image(images / "0015/imgs/b.png", 300, 200, {(110, 40): (0, 255, 0)})
    _image(images / "0022/imgs/c.png", 320, 240, {})
    crop_list = tmp_path / "data/crop_metadata/MegaDepth/crops_release.txt"
    crop_list.parent.mkdir(parents=True)
    crop_list.write_text(
        "# img1, img2, rotation\n# l1, r1, t1, b1, l2, r2, t2, b2\n"
        "0015/imgs/a.png, 0015/imgs/b.png, 85.0\n"
        "40, 104, 20, 84, 100, 164, 35, 99\n"  # 64x64 crops: no resize; image 2 turned by 90
        "0, 160, 0, 160, 0, 128, 0, 128\n"  # 160^2 > 4 x 64^2: Lanczos; 128^2 = 4 x 64^2: bicubic
        "0022/imgs/c.png, 0022/imgs/c.png, -30\n"
        "0, 64, 0, 64, 300, 364, 0, 64\n"  # second rectangle outside the 320 px wide image
        "not a line\n"
    )
    return tmp_path / "data"


def test_quarter_turns_follow_the_official_rule():
    assert [quarter_turn(r) for r in (0, 59.9, -60, 61, 85, 134, 136, -100, 180, 271)] == [
        0, 0, 0, 90, 90, 90, 180, 270, 180, 270,
    ]  # fmt: skip
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    for degrees in (0, 90, 180, 270):  # PIL's rotate direction: counter-clockwise
        assert np.array_equal(turn(image, degrees), np.asarray(Image.fromarray(image).rotate(degrees)))


def test_a_known_pixel_lands_where_the_crop_and_turn_put_it(release):
    settings = settings_from(release, resolution=SIZE)
    importer = CropsImporter(settings)
    items = [e for e in importer.scan() if not isinstance(e, Skipped)]
    assert [item.scene for item in items] == ["MegaDepth/0015", "MegaDepth/0015", "MegaDepth/0022"]
    record = importer.load(items[0])
    # image 1: source pixel (50, 30) in the box from (40, 20) is output pixel (10, 10)
    assert tuple(record.image1[10, 10]) == (255, 0, 0)
    assert np.array_equal(record.image1, np.asarray(Image.open(release / "original_datasets/MegaDepth/0015/imgs/a.png"))[20:84, 40:104])
    # image 2: source (110, 40) -> crop pixel (u, v) = (10, 5) -> turned 90 degrees counter-clockwise -> (v, S-1-u)
    assert tuple(record.image2[SIZE - 1 - 10, 5]) == (0, 255, 0)
    assert (record.image2 == (0, 255, 0)).all(axis=-1).sum() == 1
    assert record.K1 is None and record.pose1 is None and record.covis12 is None  # unknown, not invented


def test_resize_filter_follows_the_area_rule(release):
    importer = CropsImporter(settings_from(release, resolution=SIZE))
    items = [e for e in importer.scan() if not isinstance(e, Skipped)]
    record = importer.load(items[1])
    a = Image.open(release / "original_datasets/MegaDepth/0015/imgs/a.png")
    b = Image.open(release / "original_datasets/MegaDepth/0015/imgs/b.png")
    lanczos = np.asarray(a.crop((0, 0, 160, 160)).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    bicubic = np.asarray(b.crop((0, 0, 128, 128)).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    assert np.array_equal(record.image1, lanczos)
    assert np.array_equal(record.image2, np.rot90(bicubic))
    other = np.asarray(a.crop((0, 0, 160, 160)).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    assert not np.array_equal(lanczos, other)  # the two filters differ on this image: the choice is tested
    assert np.array_equal(crop_and_resize(np.asarray(a), (0, 0, 128, 128), SIZE),
                          np.asarray(a.crop((0, 0, 128, 128)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)))  # fmt: skip


def test_import_writes_shards_and_counts_what_it_skips(release, tmp_path, capsys):
    summary = import_pairs(CropsImporter(settings_from(release, resolution=SIZE)), tmp_path / "out",
                           pairs_per_shard=2, progress=False)  # fmt: skip
    assert summary.imported == 2 and summary.skipped == {"invalid crop": 1, "unreadable line": 1}
    out = capsys.readouterr().out
    assert "crops_release.txt:8: 1 fields" in out and "crops_release.txt:7: crop (l 300, r 364" in out
    readers = [ShardReader(p) for p in list_shards(tmp_path / "out")]
    assert sum(len(r) for r in readers) == 2 and readers[0].attrs["source"] == "crops"
    pair = readers[0].read(0, fields=("image1", "image2"))
    importer = CropsImporter(settings_from(release, resolution=SIZE))
    first = importer.load(next(e for e in importer.scan() if not isinstance(e, Skipped)))
    for view in ("image1", "image2"):  # the first crop pair, through JPEG
        assert np.abs(np.asarray(pair[view]).astype(int) - getattr(first, view).astype(int)).mean() < 4


def test_a_single_list_file_and_the_images_option(release, tmp_path):
    crop_list = release / "crop_metadata/MegaDepth/crops_release.txt"
    items = list(CropsImporter(settings_from(crop_list, resolution=SIZE)).scan())
    assert sum(not isinstance(i, Skipped) for i in items) == 3
    assert str(items[0].path1).startswith(str(release / "original_datasets/MegaDepth"))
    moved = tmp_path / "elsewhere"
    (release / "original_datasets").rename(moved)
    with pytest.raises(FileNotFoundError, match=r"MegaDepth: original images folder .* does not exist"):
        CropsImporter(settings_from(release, resolution=SIZE)).check_input()
    importer = CropsImporter(settings_from(release, resolution=SIZE), images=moved)
    importer.check_input()
    with pytest.raises(FileNotFoundError, match=r"no crop_metadata/<Dataset>/crops_release.txt for datasets \['IndoorVL'\]"):
        CropsImporter(settings_from(release, resolution=SIZE), datasets=["IndoorVL"]).check_input()


def test_unparsable_lines_are_skipped_with_the_file_and_line(tmp_path):
    crop_list = tmp_path / "crops_release.txt"
    crop_list.write_text("1, 2, 3, 4, 5, 6, 7, 8\na.jpg, b.jpg, ninety\na.jpg, b.jpg, 0\n1, 2, x, 4, 5, 6, 7, 8\n")
    entries = list(parse_crop_list(crop_list, tmp_path, "ARKitScenes", 2))
    assert all(isinstance(e, Skipped) for e in entries) and len(entries) == 3
    assert [e.detail.split(": ", 1)[0].rsplit(":", 1)[1] for e in entries] == ["1", "2", "4"]
    assert "before any image-pair line" in entries[0].detail and "not a number" in entries[1].detail


def test_tiny_pretraining_on_imported_crops_is_one_data_override(release, compose_at, single_thread):
    """``python generate.py source=crops input=data`` writes data/crops; ``data=crops`` trains on it."""
    from croco.tasks.training import train

    assert import_pairs(CropsImporter(settings_from(release, resolution=64)), release / "crops",
                        progress=False).imported == 2  # fmt: skip
    cfg = compose_at(tiny_pretraining_overrides("crops", 0.0), release.parent)
    assert cfg.data.sources[0].path == f"{release}/crops"
    assert math.isfinite(train(cfg)["train/loss"])
