"""Per-image CRC32 checksums (schema version 2): a flipped bit in a stored JPEG, which mostly decodes without
any error to wrong pixels, becomes a counted corrupt pair; version-1 shards (no checksums) still read."""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from croco.data import shards
from croco.data.datamodule import PairDataModule
from croco.data.shards import SCHEMA_VERSION, CorruptPairError, ShardError, ShardReader
from tests.data.conftest import write_shard


def _flip_a_silent_bit(path: Path, row: int) -> None:
    """Flip one bit inside the entropy-coded data of image1 of pair ``row``, at the first place where the
    damaged JPEG still decodes without any error, to other pixels (what bit rot on disk mostly looks like)."""
    reader = ShardReader(path)
    data = reader.encoded_images(row)[0]
    original = shards.decode_image(data)
    scan = data.index(b"\xff\xda") + 2 + int.from_bytes(data[data.index(b"\xff\xda") + 2 :][:2], "big")
    for position in range(scan + 8, len(data) - 8):
        damaged = bytearray(data)
        damaged[position] ^= 0x04
        try:
            pixels = shards.decode_image(bytes(damaged))
        except ValueError:
            continue
        if not np.array_equal(pixels, original):
            break
    else:
        pytest.fail("no single bit flip decodes silently")
    start = int(reader._offsets[row, 0])
    assert reader._blob_file_offset is not None
    with open(path, "r+b") as handle:
        handle.seek(reader._blob_file_offset + start + position)
        handle.write(bytes([damaged[position]]))


def test_checksum_of_every_image_is_stored(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "a.h5", ["s0", "s1"], [0.4, 0.6])
    reader = ShardReader(path)
    assert reader.attrs["schema_version"] == SCHEMA_VERSION >= 2
    with h5py.File(path, "r") as handle:
        stored = handle["image_crc32"][()]
    assert stored.dtype == np.uint32 and stored.shape == (2, 2)
    for row in range(2):
        assert [zlib.crc32(image) for image in reader.encoded_images(row)] == stored[row].tolist()


def test_flipped_bit_is_a_corrupt_pair_that_the_dataset_skips_and_counts(tmp_path: Path) -> None:
    folder = tmp_path / "pairs"
    path = write_shard(folder / "shard-00000.h5", [f"s{i}" for i in range(6)], [0.5] * 6)
    _flip_a_silent_bit(path, 2)
    reader = ShardReader(path)
    with pytest.raises(CorruptPairError, match=r"shard-00000\.h5: pair 2 image1: checksum mismatch") as info:
        reader.read(2)
    assert "\n" not in str(info.value)
    reader.read(1)
    reader.read(3)
    unchecked = ShardReader(path, verify_checksums=False)  # what the bytes alone give: no error at all
    assert unchecked.read(2)["image1"].shape == (64, 64, 3)

    module = PairDataModule(
        [{"path": str(folder), "weight": 1.0}],
        img_size=48,
        transforms="crop48+acolor",
        batch_size=2,
        num_workers=0,
        val_fraction=0.0,
        max_bad_fraction=0.5,
    )
    module.setup("fit")
    dataset = module.data_train
    bad = int(np.flatnonzero(dataset.index.local == 2)[0])
    assert dataset[bad]["pair"] == bad + 1  # the next readable pair stands in
    assert module.bad_pairs == 1


def test_version_1_shards_read_without_verification(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "old.h5", ["s0", "s1", "s2"], [0.5] * 3)
    with h5py.File(path, "r+") as handle:  # what the writer produced before checksums
        del handle["image_crc32"]
        handle.attrs["schema_version"] = 1
    _flip_a_silent_bit(path, 1)
    reader = ShardReader(path)
    assert reader.attrs["schema_version"] == 1
    assert reader.read(1)["image1"].shape == (64, 64, 3)  # nothing to verify against

    broken = write_shard(tmp_path / "broken.h5", ["s0"], [0.5])
    with h5py.File(broken, "r+") as handle:
        del handle["image_crc32"]
    with pytest.raises(
        ShardError, match=rf"broken\.h5: dataset 'image_crc32' must have shape \(1, 2\) in a version-{SCHEMA_VERSION}"
    ):
        ShardReader(broken)
    with h5py.File(broken, "r+") as handle:
        handle.attrs["schema_version"] = 4
    with pytest.raises(ShardError, match=r"broken\.h5: schema version 4, this code reads versions 1, 2, 3"):
        ShardReader(broken)
