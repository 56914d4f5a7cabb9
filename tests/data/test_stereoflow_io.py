"""The stereo / flow file formats: round trips, byte-level conventions, one-line errors naming the file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from croco.data.stereoflow_io import (
    FLO_MAGIC,
    StereoFlowFormatError,
    read_flo,
    read_kitti_disparity,
    read_kitti_flow,
    read_middlebury_calib,
    read_pfm,
    read_png16,
    write_flo,
    write_kitti_disparity,
    write_kitti_flow,
    write_middlebury_calib,
    write_pfm,
    write_png16,
)


def one_line_error(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --------------------------------------------------------------------------------------------- PFM


@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (4, 6, 3)])
def test_pfm_round_trip(tmp_path, little_endian, shape):
    rng = np.random.default_rng(0)
    array = rng.normal(size=shape).astype(np.float32)
    array.flat[0] = np.inf
    path = tmp_path / "a.pfm"
    write_pfm(path, array, scale=2.5, little_endian=little_endian)
    back, scale = read_pfm(path)
    assert back.dtype == np.float32 and back.shape == shape and back.flags.c_contiguous
    np.testing.assert_array_equal(back, array)
    assert scale == 2.5
    assert path.read_bytes().splitlines()[2] == (b"-2.500000" if little_endian else b"2.500000")


def test_pfm_rows_are_stored_bottom_to_top_in_either_byte_order(tmp_path):
    """A file written by hand: the first stored row is the image's *last* row."""
    for endian, scale in (("<", b"-1.0"), (">", b"1.0")):
        path = tmp_path / f"hand{endian == '<'}.pfm"
        stored = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=f"{endian}f4")  # bottom row first
        path.write_bytes(b"Pf\n2 3\n" + scale + b"\n" + stored.tobytes())
        image, read_scale = read_pfm(path)
        np.testing.assert_array_equal(image, [[5, 6], [3, 4], [1, 2]])
        assert read_scale == 1.0


def test_pfm_squeezes_a_single_channel(tmp_path):
    write_pfm(tmp_path / "a.pfm", np.ones((3, 4, 1), dtype=np.float32))
    assert read_pfm(tmp_path / "a.pfm")[0].shape == (3, 4)


def test_pfm_errors_name_the_file(tmp_path):
    png = tmp_path / "not.pfm"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    with pytest.raises(StereoFlowFormatError) as error:
        read_pfm(png)
    assert "not a PFM file" in one_line_error(error, png)

    bad_header = tmp_path / "header.pfm"
    bad_header.write_bytes(b"Pf\nwide 3\n-1.0\n" + b"\0" * 24)
    with pytest.raises(StereoFlowFormatError) as error:
        read_pfm(bad_header)
    assert "malformed PFM header" in one_line_error(error, bad_header)

    truncated = tmp_path / "short.pfm"
    write_pfm(truncated, np.ones((4, 5), dtype=np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-7])
    with pytest.raises(StereoFlowFormatError) as error:
        read_pfm(truncated)
    assert "truncated" in one_line_error(error, truncated)

    missing = tmp_path / "missing.pfm"
    with pytest.raises(StereoFlowFormatError) as error:
        read_pfm(missing)
    assert "not found" in one_line_error(error, missing)

    with pytest.raises(StereoFlowFormatError) as error:
        write_pfm(tmp_path / "w.pfm", np.ones((2, 2)), scale=-1.0)
    one_line_error(error, tmp_path / "w.pfm")
    with pytest.raises(StereoFlowFormatError):
        write_pfm(tmp_path / "w.pfm", np.ones((2, 2, 2)))


# --------------------------------------------------------------------------------------------- .flo


def test_flo_round_trip_and_layout(tmp_path):
    flow = np.random.default_rng(1).normal(size=(5, 7, 2)).astype(np.float32)
    path = tmp_path / "a.flo"
    write_flo(path, flow)
    data = path.read_bytes()
    assert data[:4] == b"PIEH" and struct.unpack("<fii", data[:12]) == (FLO_MAGIC, 7, 5)
    assert len(data) == 12 + 5 * 7 * 2 * 4
    np.testing.assert_array_equal(read_flo(path), flow)


def test_flo_errors_name_the_file(tmp_path):
    wrong = tmp_path / "wrong.flo"
    wrong.write_bytes(struct.pack("<fii", 1.0, 2, 2) + b"\0" * 32)
    with pytest.raises(StereoFlowFormatError) as error:
        read_flo(wrong)
    assert "magic" in one_line_error(error, wrong)

    truncated = tmp_path / "short.flo"
    write_flo(truncated, np.zeros((3, 4, 2), dtype=np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-4])
    with pytest.raises(StereoFlowFormatError) as error:
        read_flo(truncated)
    assert "truncated" in one_line_error(error, truncated)

    tiny = tmp_path / "tiny.flo"
    tiny.write_bytes(b"PIEH")
    with pytest.raises(StereoFlowFormatError) as error:
        read_flo(tiny)
    assert "truncated" in one_line_error(error, tiny)

    with pytest.raises(StereoFlowFormatError) as error:
        read_flo(tmp_path / "missing.flo")
    one_line_error(error, tmp_path / "missing.flo")
    with pytest.raises(StereoFlowFormatError):
        write_flo(tmp_path / "w.flo", np.zeros((3, 4)))


# ---------------------------------------------------------------------------------------- 16-bit PNG / KITTI


@pytest.mark.parametrize("channels", [1, 3])
def test_png16_round_trip_and_other_decoders_agree(tmp_path, channels):
    rng = np.random.default_rng(2)
    values = rng.integers(0, 65536, size=(6, 9, channels), dtype=np.uint16)
    path = tmp_path / "a.png"
    write_png16(path, values)
    back = read_png16(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, values)
    with Image.open(path) as pil:
        assert pil.size == (9, 6)
        if channels == 1:  # Pillow keeps 16-bit grayscale
            np.testing.assert_array_equal(np.asarray(pil), values[..., 0])


def test_png16_reads_files_of_other_writers(tmp_path):
    """A 16-bit grayscale PNG written by Pillow (with its own filters) reads back unchanged."""
    values = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "pil.png")
    np.testing.assert_array_equal(read_png16(tmp_path / "pil.png")[..., 0], values)


def test_kitti_disparity_round_trip_with_validity(tmp_path):
    rng = np.random.default_rng(3)
    disparity = rng.uniform(0.01, 250.0, size=(7, 11)).astype(np.float32)
    valid = rng.random((7, 11)) > 0.3
    disparity[0, 0] = np.inf  # non-finite -> invalid too
    path = tmp_path / "disp.png"
    write_kitti_disparity(path, disparity, valid)
    back, back_valid = read_kitti_disparity(path)
    expected_valid = valid & np.isfinite(disparity)
    np.testing.assert_array_equal(back_valid, expected_valid)
    assert np.all(back[~back_valid] == 0)
    np.testing.assert_allclose(back[expected_valid], disparity[expected_valid], atol=0.5 / 256)
    # the devkit's encoding: uint16 = round(256 d), 0 = invalid
    with Image.open(path) as pil:
        raw = np.asarray(pil)
    np.testing.assert_array_equal(raw[expected_valid], np.round(disparity[expected_valid] * 256))


def test_kitti_flow_round_trip_with_validity(tmp_path):
    rng = np.random.default_rng(4)
    flow = rng.uniform(-300, 300, size=(6, 8, 2)).astype(np.float32)
    valid = rng.random((6, 8)) > 0.4
    path = tmp_path / "flow.png"
    write_kitti_flow(path, flow, valid)
    back, back_valid = read_kitti_flow(path)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_allclose(back[valid], flow[valid], atol=0.5 / 64)
    raw = read_png16(path)
    np.testing.assert_array_equal(raw[..., 2], valid.astype(np.uint16))
    np.testing.assert_array_equal(raw[valid][:, :2], np.round(flow[valid] * 64 + 2**15))


def test_kitti_errors_name_the_file(tmp_path):
    flow_png = tmp_path / "flow.png"
    write_kitti_flow(flow_png, np.zeros((3, 4, 2)))
    with pytest.raises(StereoFlowFormatError) as error:
        read_kitti_disparity(flow_png)
    assert "grayscale" in one_line_error(error, flow_png)

    disp_png = tmp_path / "disp.png"
    write_kitti_disparity(disp_png, np.ones((3, 4)))
    with pytest.raises(StereoFlowFormatError) as error:
        read_kitti_flow(disp_png)
    assert "RGB" in one_line_error(error, disp_png)

    eight_bit = tmp_path / "rgb8.png"
    Image.fromarray(np.zeros((3, 4, 3), dtype=np.uint8)).save(eight_bit)
    with pytest.raises(StereoFlowFormatError) as error:
        read_kitti_flow(eight_bit)
    one_line_error(error, eight_bit)

    not_png = tmp_path / "text.png"
    not_png.write_text("hello")
    with pytest.raises(StereoFlowFormatError) as error:
        read_kitti_disparity(not_png)
    assert "not a PNG" in one_line_error(error, not_png)

    broken = tmp_path / "broken.png"
    broken.write_bytes(disp_png.read_bytes()[:40])
    with pytest.raises(StereoFlowFormatError) as error:
        read_kitti_disparity(broken)
    one_line_error(error, broken)


# --------------------------------------------------------------------------------------------- calib.txt

MIDDLEBURY_2014_CALIB = """cam0=[3997.684 0 1176.728; 0 3997.684 1011.728; 0 0 1]
cam1=[3997.684 0 1307.839; 0 3997.684 1011.728; 0 0 1]
doffs=131.111
baseline=193.001
width=2964
height=1988
ndisp=280
isint=0
vmin=31
vmax=257
dyavg=0.918
dymax=1.516
"""


def test_middlebury_calib_parses_the_official_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(MIDDLEBURY_2014_CALIB)
    calib = read_middlebury_calib(path)
    np.testing.assert_array_equal(
        calib["cam0"], [[3997.684, 0, 1176.728], [0, 3997.684, 1011.728], [0, 0, 1]]
    )
    assert calib["cam1"][0, 2] == 1307.839
    assert calib["doffs"] == 131.111 and calib["baseline"] == 193.001
    assert (calib["width"], calib["height"], calib["ndisp"], calib["isint"]) == (2964, 1988, 280, 0)
    assert isinstance(calib["width"], int) and calib["dymax"] == 1.516


def test_middlebury_calib_round_trip(tmp_path):
    calib = {"cam0": np.array([[1758.23, 0, 953.34], [0, 1758.23, 552.29], [0, 0, 1]]), "doffs": 0.5}
    calib.update(baseline=111.53, width=1920, height=1080, ndisp=290)
    write_middlebury_calib(tmp_path / "calib.txt", calib)
    back = read_middlebury_calib(tmp_path / "calib.txt")
    assert set(back) == set(calib)
    np.testing.assert_array_equal(back["cam0"], calib["cam0"])
    assert all(back[k] == calib[k] for k in calib if k != "cam0")


def test_middlebury_calib_errors_name_the_file(tmp_path):
    bad_line = tmp_path / "bad.txt"
    bad_line.write_text("cam0=[1 0 0; 0 1 0; 0 0 1]\nthis is not a pair\n")
    with pytest.raises(StereoFlowFormatError) as error:
        read_middlebury_calib(bad_line)
    assert "line 2" in one_line_error(error, bad_line)

    no_camera = tmp_path / "nocam.txt"
    no_camera.write_text("doffs=0\nbaseline=1\n")
    with pytest.raises(StereoFlowFormatError) as error:
        read_middlebury_calib(no_camera)
    assert "cam0" in one_line_error(error, no_camera)

    ragged = tmp_path / "ragged.txt"
    ragged.write_text("cam0=[1 0; 0 1 0; 0 0 1]\n")
    with pytest.raises(StereoFlowFormatError) as error:
        read_middlebury_calib(ragged)
    one_line_error(error, ragged)

    with pytest.raises(StereoFlowFormatError) as error:
        read_middlebury_calib(tmp_path / "missing.txt")
    one_line_error(error, tmp_path / "missing.txt")
