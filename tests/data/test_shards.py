"""Shard format: round trip, atomic writes, lazy picklable readers, and one-line errors for bad input."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from croco.data.shards import (
    SCHEMA_VERSION,
    CorruptPairError,
    PairRecord,
    ShardError,
    ShardReader,
    ShardWriter,
    list_shards,
)
from tests.data.conftest import make_record, write_shard


def _record_with_everything(rng: np.random.Generator, size: int = 32) -> PairRecord:
    extras = {
        "disparity": rng.uniform(0, 20, (size, size)),
        "flow": rng.normal(size=(size, size, 2)),
        "flow_valid": rng.random((size, size)) > 0.3,
        "semantics1": rng.integers(0, 12, (size, size)).astype(np.uint8),
    }
    return make_record(rng, size=size, scene="apt_3", covis=(0.8, 0.6), depth=True, extras=extras)


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_round_trip_keeps_every_field(tmp_path: Path, image_format: str) -> None:
    rng = np.random.default_rng(1)
    records = [_record_with_everything(rng) for _ in range(3)]
    path = tmp_path / "a.h5"
    with ShardWriter(
        path,
        source="unit",
        resolution=(32, 32),
        fov_deg=60.0,
        image_format=image_format,
        attrs={"seed": 7, "generator": {"renderer": "cpu", "levels": [1, 2]}},
    ) as writer:
        for record in records:
            writer.add(record)
        writer.update_attrs({"stats": {"rejected": 4}})
        with pytest.raises(ValueError, match=r"attrs \['source'\] are reserved"):
            writer.update_attrs({"source": "other"})

    reader = ShardReader(path)
    assert len(reader) == 3
    assert reader.attrs["schema_version"] == SCHEMA_VERSION
    assert reader.attrs["source"] == "unit"
    assert reader.attrs["pair_count"] == 3
    assert reader.attrs["fov_deg"] == pytest.approx(60.0)
    assert reader.attrs["seed"] == 7
    assert reader.attrs["generator"] == {"renderer": "cpu", "levels": [1, 2]}
    assert reader.attrs["stats"] == {"rejected": 4}
    assert reader.resolution == (32, 32)
    assert reader.scene == ["apt_3"] * 3
    np.testing.assert_allclose(reader.overlap, [0.6] * 3, rtol=1e-6)
    for index, original in enumerate(records):
        back = reader.read_record(index)
        if image_format == "png":
            np.testing.assert_array_equal(back.image1, original.image1)
            np.testing.assert_array_equal(back.image2, original.image2)
        else:  # lossy: decoding must equal PIL's, and stay near the original (chroma bleeds at block edges)
            stored = Image.open(io.BytesIO(reader.encoded_images(index)[0]))
            np.testing.assert_array_equal(back.image1, np.asarray(stored.convert("RGB")))
            mse = np.mean((back.image1.astype(float) - original.image1) ** 2)
            assert 10 * np.log10(255**2 / mse) > 20
        for name in ("K1", "K2", "pose1", "pose2"):
            np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
        assert back.covis12 == pytest.approx(0.8) and back.covis21 == pytest.approx(0.6)
        assert back.overlap == pytest.approx(0.6)
        assert back.depth1.dtype == np.float32
        np.testing.assert_allclose(back.depth1, original.depth1, rtol=1e-3)  # stored as float16
        np.testing.assert_allclose(back.extras["flow"], original.extras["flow"], rtol=1e-6)
        np.testing.assert_array_equal(back.extras["flow_valid"], original.extras["flow_valid"])
        np.testing.assert_array_equal(back.extras["semantics1"], original.extras["semantics1"])
        assert back.extras["semantics1"].dtype == np.uint8
    data = reader.read(2, fields=("image1", "scene", "overlap", "depth2"))
    assert set(data) == {"image1", "scene", "overlap", "depth2"}
    assert data["image1"].shape == (32, 32, 3) and data["image1"].dtype == np.uint8
    first, second = reader.encoded_images(0)
    magic = b"\x89PNG" if image_format == "png" else b"\xff\xd8"
    assert first.startswith(magic) and second.startswith(magic)


def test_file_layout_is_plain_hdf5(tmp_path: Path) -> None:
    """The documented layout (docs/data-format.md) is what lands on disk."""
    path = write_shard(tmp_path / "a.h5", ["s0", "s1"], [0.2, 0.7])
    with h5py.File(path, "r") as handle:
        assert handle.attrs["format"] == "croco-pairs"
        assert handle["image_offsets"].shape == (2, 3)
        assert handle["K1"].shape == (2, 3, 3) and handle["pose2"].shape == (2, 4, 4)
        np.testing.assert_allclose(handle["overlap"][()], [0.2, 0.7], rtol=1e-6)
        offsets = handle["image_offsets"][()]
        blob = handle["images"][()]
        assert bytes(blob[offsets[1, 1] : offsets[1, 2]][:2]) == b"\xff\xd8"
        assert list(handle["scene"].asstr()[()]) == ["s0", "s1"]


def test_chunked_image_blob_is_read_through_h5py(tmp_path: Path) -> None:
    """Shards written by other tools (chunked/compressed image blob) still read; only the pread shortcut is off."""
    original = write_shard(tmp_path / "a.h5", ["s0", "s1", "s2"], [0.2, 0.5, 0.7])
    copy = tmp_path / "b.h5"
    with h5py.File(original, "r") as src, h5py.File(copy, "w") as dst:
        dst.attrs.update(src.attrs)
        for name in src:
            options = {"chunks": (1024,), "compression": "gzip"} if name == "images" else {}
            dst.create_dataset(name, data=src[name][()], dtype=src[name].dtype, **options)
    a, b = ShardReader(original), ShardReader(copy)
    assert a._blob_file_offset is not None and b._blob_file_offset is None
    for row in range(3):
        assert a.encoded_images(row) == b.encoded_images(row)


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "shard.h5"
    with (
        pytest.raises(RuntimeError, match="boom"),
        ShardWriter(path, source="unit", resolution=(32, 32)) as writer,
    ):
        writer.add(make_record(rng))
        assert not path.exists()  # only the temporary file exists while writing
        assert any(p.name.startswith("shard.h5.tmp-") for p in tmp_path.iterdir())
        with pytest.raises(ShardError):
            list_shards(tmp_path)  # and it is never listed as a shard
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "shard.h5"
    with ShardWriter(path, source="unit", resolution=(32, 32)) as writer:
        bad = make_record(rng, size=16)
        with pytest.raises(
            ValueError, match=r"shard\.h5: pair 0: image1 must be uint8 of shape \(32, 32, 3\)"
        ):
            writer.add(bad)
        with pytest.raises(ValueError, match="covis12 must be a fraction"):
            writer.add(make_record(rng, covis=(1.5, 0.2)))
        writer.add(make_record(rng, depth=True))
        with pytest.raises(
            ValueError, match=r"optional fields \[\] differ from the shard's \['depth1', 'depth2'\]"
        ):
            writer.add(make_record(rng, depth=False))
        with pytest.raises(ValueError, match="extras key 'pose1'"):
            writer.add(make_record(rng, depth=True, extras={"pose1": np.zeros((32, 32))}))
    reader = ShardReader(path)
    assert len(reader) == 1  # rejected records left no trace
    assert reader.read_record(0).depth1.shape == (32, 32)

    with ShardWriter(tmp_path / "extras.h5", source="unit", resolution=(32, 32)) as writer:
        writer.add(make_record(rng, extras={"flow": np.zeros((32, 32, 2))}))
        with pytest.raises(
            ValueError, match=r"flow has shape \(32, 32, 3\), the shard's first pair set \(32, 32, 2\)"
        ):
            writer.add(make_record(rng, extras={"flow": np.zeros((32, 32, 3))}))
        with pytest.raises(ValueError, match="flow has unsupported dtype <U1"):
            writer.add(make_record(rng, extras={"flow": np.full((32, 32, 2), "x")}))
        writer.add(make_record(rng, extras={"flow": np.ones((32, 32, 2))}))
    flows = [ShardReader(tmp_path / "extras.h5").read(i, fields=("flow",))["flow"] for i in range(2)]
    assert [float(f.mean()) for f in flows] == [0.0, 1.0]
    with pytest.raises(ValueError, match="reserved"):
        ShardWriter(tmp_path / "x.h5", source="unit", resolution=(32, 32), attrs={"pair_count": 3})


def test_reader_is_lazy_and_picklable(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "a.h5", ["s0", "s1"], [0.3, 0.6])
    reader = ShardReader(path)
    assert reader._file is None  # nothing held open after validation
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read(1)["image2"], reader.read(1)["image2"])
    assert reader._fd is not None  # images come through a plain descriptor (pread), opened on first read
    reader.read(0, fields=("K1",))
    assert reader._file is not None  # other fields through h5py, also opened on demand
    again = pickle.loads(pickle.dumps(reader))  # open handles are never pickled
    assert again._file is None and again._fd is None
    np.testing.assert_array_equal(again.read(0)["image1"], reader.read(0)["image1"])


def test_reader_reopens_after_fork(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "a.h5", ["s0", "s1"], [0.3, 0.6])
    reader = ShardReader(path)
    expected = reader.encoded_images(1)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's HDF5 handle
        ok = reader.encoded_images(1) == expected and reader._pid == os.getpid()
        os.write(write_fd, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read_fd, 1) == b"1"


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match=r"nowhere: shard folder does not exist"):
        list_shards(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match=r"empty: no shards \(\*\.h5\) in folder"):
        list_shards(tmp_path / "empty")
    with pytest.raises(ShardError, match="shard file does not exist"):
        ShardReader(tmp_path / "nope.h5")


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "cut.h5", ["s0", "s1", "s2"], [0.3, 0.6, 0.9])
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(ShardError, match=r"cut\.h5: ") as info:
        ShardReader(path)
    assert "\n" not in str(info.value)


def test_wrong_schema_version_and_foreign_files(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "future.h5", ["s0"], [0.5])
    with h5py.File(path, "r+") as handle:
        handle.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(
        ShardError, match=rf"future\.h5: schema version {SCHEMA_VERSION + 1}, this code reads"
    ):
        ShardReader(path)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = np.arange(3)
    with pytest.raises(ShardError, match=r"foreign\.h5: not a CroCo pair shard"):
        ShardReader(foreign)
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("hello")
    with pytest.raises(ShardError, match=r"text\.h5: unreadable HDF5 shard"):
        ShardReader(not_hdf5)


def test_corrupt_image_names_file_and_pair(tmp_path: Path, corrupt_pair) -> None:
    path = write_shard(tmp_path / "a.h5", ["s0", "s1", "s2"], [0.3, 0.6, 0.9])
    corrupt_pair(path, 1)
    reader = ShardReader(path)  # the shard itself is healthy
    reader.read(0)
    reader.read(2)
    with pytest.raises(CorruptPairError, match=r"a\.h5: pair 1 image2: JPEG stream is truncated"):
        reader.read(1)
    with pytest.raises(IndexError, match=r"pair index 3 out of range \[0, 3\)"):
        reader.read(3)
    with pytest.raises(KeyError, match="no field"):
        reader.read(0, fields=("depth1",))


def test_open_files_are_bounded(tmp_path: Path, monkeypatch) -> None:
    from croco.data import shards

    monkeypatch.setattr(shards._OPEN_SHARDS, "limit", 2)
    readers = [ShardReader(write_shard(tmp_path / f"{k}.h5", ["s"], [0.5], seed=k)) for k in range(3)]
    first = readers[0].encoded_images(0)
    readers[1].read(0, fields=("image1", "K1"))
    readers[2].encoded_images(0)
    assert readers[0]._fd is None and readers[0]._file is None  # least recently used: closed
    assert readers[2]._fd is not None
    assert readers[0].encoded_images(0) == first  # and transparently reopened
    assert readers[1]._fd is None


def test_every_decoder_backend_gives_the_same_pixels(tmp_path: Path, monkeypatch) -> None:
    """simplejpeg, torchvision and PIL are interchangeable: the fallbacks are not dead code."""
    from croco.data import shards

    rng = np.random.default_rng(0)
    record = make_record(rng, size=32)
    jpeg = shards.encode_image(record.image1, "jpeg")
    png = shards.encode_image(record.image1, "png")
    reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    results = {"default": shards.decode_image(jpeg)}
    monkeypatch.setattr(shards, "_simplejpeg", lambda: None)
    results["torchvision"] = shards.decode_image(jpeg)
    np.testing.assert_array_equal(shards.decode_image(png), record.image1)
    monkeypatch.setattr(shards, "_torchvision_decoder", lambda: None)
    results["pil"] = shards.decode_image(jpeg)
    np.testing.assert_array_equal(shards.decode_image(png), record.image1)
    for name, image in results.items():
        assert image.shape == (32, 32, 3) and image.flags["C_CONTIGUOUS"], name
        np.testing.assert_array_equal(image, reference, err_msg=name)
    with pytest.raises(ValueError, match="cannot decode image"):
        shards.decode_image(jpeg[:200] + b"\xff\xd9")
