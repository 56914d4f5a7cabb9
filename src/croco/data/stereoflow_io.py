"""File formats of the stereo and optical-flow benchmarks: read and write, one-line errors naming the file.

- PFM (Portable Float Map; Middlebury, SceneFlow/FlyingThings3D, ETH3D disparities): an ASCII header ``PF`` (3
  channels) or ``Pf`` (1 channel), ``<width> <height>``, a scale whose *sign* gives the byte order (negative:
  little endian), one whitespace byte, then float32 rows stored bottom to top. ``read_pfm`` returns the rows
  top to bottom (image order) and the absolute scale.
- ``.flo`` (Middlebury optical-flow format, also MPI-Sintel and FlyingChairs): float32 magic 202021.25 (the
  bytes ``PIEH``), int32 width, int32 height, then (H, W, 2) float32 (u, v) row-major, all little endian.
  Middlebury marks unknown flow with values above 1e9 (``UNKNOWN_FLOW_THRESHOLD``).
- KITTI 16-bit PNGs (KITTI stereo / flow devkit, ``readme.txt``): a disparity map is uint16 grayscale with
  disparity = value / 256 and 0 = no ground truth; a flow map is 3 x uint16 (R = u, G = v, B = valid) with
  flow = (value - 2^15) / 64 and B = 0 = no ground truth.
- Middlebury ``calib.txt`` (2014 / 2021 / MiddEval3): ``key=value`` lines, the intrinsics as MATLAB-style
  matrices ``cam0=[f 0 cx; 0 f cy; 0 0 1]``, and scalars ``doffs``, ``baseline`` (mm), ``width``, ``height``,
  ``ndisp``, ``isint``, ``vmin``, ``vmax``, ``dyavg``, ``dymax``.

16-bit PNGs are decoded with torchvision's libpng operator (Pillow has no 16-bit RGB mode) and written by a
small encoder here (zlib, filter 0, big-endian samples as the PNG specification requires), because neither
Pillow nor torchvision encodes 16-bit colour. The official CroCo-Stereo/Flow readers (naver/croco
``stereoflow/datasets_stereo.py``, ``stereoflow/datasets_flow.py``) read the same formats with OpenCV and mark
invalid ground truth with +inf, as ``croco.data.stereoflow`` does on top of these functions.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FLO_MAGIC",
    "UNKNOWN_FLOW_THRESHOLD",
    "StereoFlowFormatError",
    "read_flo",
    "read_kitti_disparity",
    "read_kitti_flow",
    "read_middlebury_calib",
    "read_pfm",
    "read_png16",
    "write_flo",
    "write_kitti_disparity",
    "write_kitti_flow",
    "write_middlebury_calib",
    "write_pfm",
    "write_png16",
]

FLO_MAGIC: float = 202021.25
"""The float32 tag that opens every ``.flo`` file (the bytes ``PIEH`` in little endian)."""

UNKNOWN_FLOW_THRESHOLD: float = 1e9
"""Middlebury's convention: flow components above this magnitude mean "unknown"."""

KITTI_DISPARITY_SCALE: float = 256.0
KITTI_FLOW_SCALE: float = 64.0
KITTI_FLOW_OFFSET: float = 2.0**15

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PFM_HEADER = re.compile(rb"^(P[Ff])\s+(\d+)\s+(\d+)\s+([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s")

PathLike = str | os.PathLike


class StereoFlowFormatError(ValueError):
    """A file of one of these formats cannot be read or written; the message is one line naming the file."""


def _read_bytes(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise StereoFlowFormatError(f"{path}: file not found; expected a {what}") from None
    except OSError as error:
        raise StereoFlowFormatError(f"{path}: cannot read: {error.strerror or error}") from None


def _write_bytes(path: PathLike, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


# --------------------------------------------------------------------------------------------- PFM


def read_pfm(path: PathLike) -> tuple[np.ndarray, float]:
    """A PFM file -> (float32 (H, W) or (H, W, 3) with rows top to bottom, scale > 0); either byte order."""
    data = _read_bytes(path, "PFM file (header 'Pf' or 'PF')")
    match = _PFM_HEADER.match(data[:256])
    if match is None:
        start = data[:2]
        if start not in (b"Pf", b"PF"):
            raise StereoFlowFormatError(
                f"{path}: not a PFM file (starts with {data[:4]!r}, expected 'Pf' or 'PF')"
            )
        raise StereoFlowFormatError(
            f"{path}: malformed PFM header; expected 'Pf|PF <width> <height> <scale>'"
        )
    kind, width, height, scale_text = match.groups()
    width, height, scale = int(width), int(height), float(scale_text)
    if width < 1 or height < 1 or scale == 0.0:
        raise StereoFlowFormatError(f"{path}: PFM header gives size {width}x{height}, scale {scale}")
    channels = 3 if kind == b"PF" else 1
    expected = width * height * channels * 4
    payload = data[match.end() :]
    if len(payload) < expected:
        raise StereoFlowFormatError(
            f"{path}: truncated PFM: {len(payload)} data bytes, expected {expected} "
            f"for {width}x{height}x{channels}"
        )
    dtype = np.dtype("<f4" if scale < 0 else ">f4")
    array = np.frombuffer(payload, dtype=dtype, count=width * height * channels)
    shape = (height, width, 3) if channels == 3 else (height, width)
    array = array.reshape(shape)[::-1].astype(np.float32)  # bottom-to-top rows -> image order, native floats
    return np.ascontiguousarray(array), abs(scale)


def write_pfm(path: PathLike, array: np.ndarray, scale: float = 1.0, little_endian: bool = True) -> None:
    """Write float (H, W), (H, W, 1) or (H, W, 3) as PFM (rows bottom to top; scale sign = byte order)."""
    values = np.asarray(array)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[..., 0]
    if (
        not (values.ndim == 2 or (values.ndim == 3 and values.shape[2] == 3))
        or values.dtype.kind not in "fiu"
    ):
        raise StereoFlowFormatError(
            f"{path}: cannot write {values.dtype} {values.shape} as PFM; "
            "expected numbers of shape (H, W) or (H, W, 3)"
        )
    if not scale > 0:
        raise StereoFlowFormatError(
            f"{path}: PFM scale must be > 0 (its sign encodes the byte order), got {scale}"
        )
    kind = b"PF" if values.ndim == 3 else b"Pf"
    height, width = values.shape[:2]
    signed_scale = -float(scale) if little_endian else float(scale)
    header = kind + b"\n" + f"{width} {height}\n{signed_scale:f}\n".encode("ascii")
    body = np.ascontiguousarray(values[::-1], dtype="<f4" if little_endian else ">f4").tobytes()
    _write_bytes(path, header + body)


# --------------------------------------------------------------------------------------------- .flo


def read_flo(path: PathLike) -> np.ndarray:
    """A Middlebury ``.flo`` file -> float32 (H, W, 2) (u, v); values are returned as stored."""
    data = _read_bytes(path, ".flo optical-flow file")
    if len(data) < 12:
        raise StereoFlowFormatError(
            f"{path}: truncated .flo file ({len(data)} bytes, the header alone is 12)"
        )
    (magic,) = struct.unpack("<f", data[:4])
    if magic != FLO_MAGIC:
        raise StereoFlowFormatError(
            f"{path}: not a .flo file (magic {data[:4]!r}, expected b'PIEH' = {FLO_MAGIC})"
        )
    width, height = struct.unpack("<ii", data[4:12])
    if width < 1 or height < 1:
        raise StereoFlowFormatError(f"{path}: .flo header gives an invalid size {width}x{height}")
    expected = width * height * 2 * 4
    if len(data) - 12 != expected:
        raise StereoFlowFormatError(
            f"{path}: .flo holds {len(data) - 12} data bytes, "
            f"expected {expected} for {width}x{height}x2 float32"
            + (" (truncated)" if len(data) - 12 < expected else "")
        )
    flow = np.frombuffer(data, dtype="<f4", count=width * height * 2, offset=12)
    return flow.reshape(height, width, 2).astype(np.float32)


def write_flo(path: PathLike, flow: np.ndarray) -> None:
    """Write (H, W, 2) flow as a Middlebury ``.flo`` file (little endian)."""
    values = np.asarray(flow)
    if values.ndim != 3 or values.shape[2] != 2 or values.dtype.kind not in "fiu":
        raise StereoFlowFormatError(
            f"{path}: cannot write {values.dtype} {values.shape} as .flo; expected (H, W, 2)"
        )
    height, width = values.shape[:2]
    header = struct.pack("<fii", FLO_MAGIC, width, height)
    _write_bytes(path, header + np.ascontiguousarray(values, dtype="<f4").tobytes())


# --------------------------------------------------------------------------------------------- 16-bit PNG


@functools.cache
def _png_decoder() -> Any:
    """torchvision's libpng operator (16-bit aware, no deprecation warning), or None where it is missing."""
    try:
        import torch
        import torchvision.io  # noqa: F401  (registers torch.ops.image)

        return torch.ops.image.decode_png
    except (ImportError, AttributeError, RuntimeError):
        return None


def read_png16(path: PathLike) -> np.ndarray:
    """A PNG -> (H, W, C) array as stored (uint16 for 16-bit files, uint8 for 8-bit ones)."""
    data = _read_bytes(path, "PNG file")
    if data[:8] != _PNG_MAGIC:
        raise StereoFlowFormatError(f"{path}: not a PNG file (starts with {data[:4]!r})")
    decode = _png_decoder()
    if decode is not None:
        import torch

        try:
            chw = decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), 0, False)  # 0 = UNCHANGED
        except RuntimeError as error:
            raise StereoFlowFormatError(f"{path}: cannot decode PNG: {str(error).splitlines()[0]}") from None
        return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())
    from PIL import Image

    try:  # Pillow keeps 16 bits for grayscale only ("I;16"); 16-bit colour would lose its low byte
        with Image.open(path) as pil:
            if pil.mode not in ("I;16", "I;16B", "I", "L", "RGB"):
                raise StereoFlowFormatError(f"{path}: PNG mode {pil.mode} needs torchvision's PNG decoder")
            array = np.asarray(pil)
    except OSError as error:
        raise StereoFlowFormatError(f"{path}: cannot decode PNG: {error}") from None
    return array[..., None] if array.ndim == 2 else array


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_png16(path: PathLike, array: np.ndarray) -> None:
    """Write uint16 (H, W), (H, W, 1) or (H, W, 3) as a 16-bit grayscale or RGB PNG (filter 0, zlib)."""
    values = np.asarray(array)
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[2] not in (1, 3) or values.dtype != np.uint16:
        raise StereoFlowFormatError(
            f"{path}: cannot write {values.dtype} {values.shape} as a 16-bit PNG; "
            "expected uint16 (H, W[, 1 or 3])"
        )
    height, width, channels = values.shape
    colour_type = 2 if channels == 3 else 0
    rows = np.ascontiguousarray(values, dtype=">u2").view(np.uint8).reshape(height, width * channels * 2)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()  # filter byte 0
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    png = _PNG_MAGIC + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw, 6))
    _write_bytes(path, png + _png_chunk(b"IEND", b""))


# --------------------------------------------------------------------------------------------- KITTI


def read_kitti_disparity(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A KITTI disparity PNG -> (float32 (H, W) disparity in pixels, bool (H, W) valid); 0 = no data."""
    values = read_png16(path)
    if values.shape[2] != 1 or values.dtype != np.uint16:
        raise StereoFlowFormatError(
            f"{path}: {values.dtype} PNG with {values.shape[2]} channel(s); "
            "expected a 16-bit grayscale KITTI disparity map"
        )
    raw = values[..., 0]
    return (raw.astype(np.float32) / KITTI_DISPARITY_SCALE), raw > 0


def write_kitti_disparity(path: PathLike, disparity: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write a disparity map as a KITTI 16-bit PNG (value = round(256 d)); invalid / non-finite pixels -> 0.

    Valid disparities are kept in [1/256, 255.996] so that they stay valid after quantisation.
    """
    disparity = np.asarray(disparity, dtype=np.float64)
    if disparity.ndim != 2:
        raise StereoFlowFormatError(f"{path}: disparity of shape {disparity.shape}; expected (H, W)")
    keep = np.isfinite(disparity) & (disparity > 0)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    scaled = np.clip(np.round(np.where(keep, disparity, 0.0) * KITTI_DISPARITY_SCALE), 1, 65535)
    write_png16(path, np.where(keep, scaled, 0).astype(np.uint16))


def read_kitti_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A KITTI flow PNG -> (float32 (H, W, 2) flow (u, v) in pixels, bool (H, W) valid)."""
    values = read_png16(path)
    if values.shape[2] != 3 or values.dtype != np.uint16:
        raise StereoFlowFormatError(
            f"{path}: {values.dtype} PNG with {values.shape[2]} channel(s); "
            "expected a 16-bit RGB KITTI flow map"
        )
    flow = (values[..., :2].astype(np.float32) - KITTI_FLOW_OFFSET) / KITTI_FLOW_SCALE
    return flow, values[..., 2] > 0


def write_kitti_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write (H, W, 2) flow as a KITTI 16-bit RGB PNG (value = round(64 f + 2^15), B = valid); non-finite
    vectors are written invalid. Components are clipped to the representable [-512, 512)."""
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise StereoFlowFormatError(f"{path}: flow of shape {flow.shape}; expected (H, W, 2)")
    keep = np.isfinite(flow).all(axis=2)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    encoded = np.round(np.where(keep[..., None], flow, 0.0) * KITTI_FLOW_SCALE + KITTI_FLOW_OFFSET)
    encoded = np.where(keep[..., None], np.clip(encoded, 0, 65535), 0)
    out = np.concatenate([encoded, keep[..., None].astype(np.float64)], axis=2).astype(np.uint16)
    write_png16(path, out)


# ----------------------------------------------------------------------------------------- Middlebury calib


def _calib_value(text: str) -> Any:
    """``[a b c; d e f]`` -> float matrix, integers -> int, other numbers -> float, anything else -> str."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        rows = [row.split() for row in text[1:-1].split(";") if row.strip()]
        if not rows or len({len(row) for row in rows}) != 1:
            raise ValueError(f"ragged matrix {text!r}")
        return np.asarray([[float(v) for v in row] for row in rows], dtype=np.float64)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_middlebury_calib(path: PathLike) -> dict[str, Any]:
    """A Middlebury ``calib.txt`` -> ``{key: value}`` (``cam0``/``cam1`` as (3, 3) float arrays, numbers as
    int / float). Missing ``cam0`` or a line without ``=`` is a one-line error."""
    text = _read_bytes(path, "Middlebury calib.txt ('key=value' lines)").decode("utf-8", errors="replace")
    calib: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise StereoFlowFormatError(f"{path}: line {number} {line.strip()!r} is not 'key=value'")
        try:
            calib[key.strip()] = _calib_value(value)
        except ValueError as error:
            raise StereoFlowFormatError(f"{path}: line {number}: {error}") from None
    camera = calib.get("cam0")
    if not isinstance(camera, np.ndarray) or camera.shape != (3, 3):
        raise StereoFlowFormatError(
            f"{path}: no 3x3 'cam0=[f 0 cx; 0 f cy; 0 0 1]' line; not a Middlebury calib.txt"
        )
    return calib


def write_middlebury_calib(path: PathLike, calib: dict[str, Any]) -> None:
    """Write ``{key: value}`` in the ``calib.txt`` syntax (matrices as ``[a b c; d e f; g h i]``)."""

    def format_value(value: Any) -> str:
        array = np.asarray(value) if not isinstance(value, str) else None
        if array is not None and array.ndim == 2:
            return (
                "[" + "; ".join(" ".join(f"{v:.10g}" for v in row) for row in array.astype(np.float64)) + "]"
            )
        if isinstance(value, float):
            return f"{value:.10g}"
        return str(value)

    lines = [f"{key}={format_value(value)}" for key, value in calib.items()]
    _write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
