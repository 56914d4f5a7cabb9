"""A small OpenEXR reader (and writer) for single-part scanline images, enough for depth maps.

The official Habitat release stores depth as half-float EXR files written by OpenCV (naver/croco,
``datasets/habitat_sim/multiview_habitat_sim_generator.py``). OpenCV reads EXR only when built with it and
switched on, so this module reads the format itself (OpenEXR's file layout: magic number, a header of typed
attributes, a table of chunk offsets, then chunks of scanlines). Supported: scanline images (not tiled, not
deep, not multi-part) with HALF, FLOAT or UINT channels and the lossless NONE, RLE, ZIPS and ZIP compressions.
Anything else is a one-line ``ValueError`` naming the file and what it holds.

``write_exr`` writes the same subset (NONE or ZIP); tests build their fixtures with it.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

MAGIC = 20000630
COMPRESSIONS = {
    0: "NONE",
    1: "RLE",
    2: "ZIPS",
    3: "ZIP",
    4: "PIZ",
    5: "PXR24",
    6: "B44",
    7: "B44A",
    8: "DWAA",
}
LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16}
PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def read_exr(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The channels of an EXR file: name -> (H, W) array (float16, float32 or uint32)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return _decode(data)
    except (struct.error, IndexError, zlib.error, ValueError, KeyError) as error:
        raise ValueError(f"{path}: cannot read EXR ({error})") from None


def read_exr_channel(
    path: str | os.PathLike, names: tuple[str, ...] = ("Y", "R", "Z", "depth")
) -> np.ndarray:
    """The one channel of a single-channel file, else the first of ``names`` present, as float32."""
    channels = read_exr(path)
    if len(channels) == 1:
        return next(iter(channels.values())).astype(np.float32)
    for name in names:
        if name in channels:
            return channels[name].astype(np.float32)
    raise ValueError(f"{path}: EXR channels {sorted(channels)}, expected one of {list(names)}")


def _decode(data: bytes) -> dict[str, np.ndarray]:
    magic, version = struct.unpack_from("<ii", data, 0)
    if magic != MAGIC:
        raise ValueError("not an OpenEXR file (bad magic number)")
    flags = version >> 8
    if flags & 0x2 or flags & 0x8 or flags & 0x10:  # tiled, deep, multi-part
        raise ValueError("tiled, deep or multi-part EXR is not supported (scanline images only)")
    header, offset = _header(data, 8)
    compression = header["compression"]
    if compression not in LINES_PER_CHUNK:
        raise ValueError(f"compression {COMPRESSIONS.get(compression, compression)} is not supported "
                         "(NONE, RLE, ZIPS, ZIP)")  # fmt: skip
    channels = header["channels"]
    x_min, y_min, x_max, y_max = header["dataWindow"]
    width, height = x_max - x_min + 1, y_max - y_min + 1
    per_chunk = LINES_PER_CHUNK[compression]
    chunks = -(-height // per_chunk)
    table = struct.unpack_from(f"<{chunks}Q", data, offset)
    out = {name: np.zeros((height, width), dtype=PIXEL_TYPES[kind]) for name, kind in channels}
    line_bytes = sum(PIXEL_TYPES[kind].itemsize for _, kind in channels) * width
    for chunk_offset in table:
        y, size = struct.unpack_from("<ii", data, chunk_offset)
        block = data[chunk_offset + 8 : chunk_offset + 8 + size]
        row = y - y_min
        lines = min(per_chunk, height - row)
        expected = line_bytes * lines
        if compression != 0 and size < expected:
            block = _unpredict(zlib.decompress(block) if compression in (2, 3) else _unrle(block))
        if len(block) != expected:
            raise ValueError(f"chunk at line {y} holds {len(block)} bytes, expected {expected}")
        position = 0
        for line in range(lines):
            for name, kind in channels:
                dtype = PIXEL_TYPES[kind]
                count = dtype.itemsize * width
                out[name][row + line] = np.frombuffer(block, dtype=dtype, count=width, offset=position)
                position += count
    return out


def _header(data: bytes, offset: int) -> tuple[dict, int]:
    header: dict = {}
    while data[offset] != 0:
        end = data.index(b"\0", offset)
        name = data[offset:end].decode()
        type_end = data.index(b"\0", end + 1)
        kind = data[end + 1 : type_end].decode()
        (size,) = struct.unpack_from("<i", data, type_end + 1)
        value = data[type_end + 5 : type_end + 5 + size]
        offset = type_end + 5 + size
        if kind == "chlist":
            header[name] = _channels(value)
        elif kind == "compression":
            header[name] = value[0]
        elif kind == "box2i":
            header[name] = struct.unpack("<4i", value)
    for key in ("channels", "compression", "dataWindow"):
        if key not in header:
            raise ValueError(f"header has no {key} attribute")
    return header, offset + 1


def _channels(value: bytes) -> list[tuple[str, int]]:
    channels, offset = [], 0
    while value[offset] != 0:
        end = value.index(b"\0", offset)
        name = value[offset:end].decode()
        kind, _, _, x_sampling, y_sampling = struct.unpack_from("<iB3sii", value, end + 1)
        if kind not in PIXEL_TYPES or (x_sampling, y_sampling) != (1, 1):
            raise ValueError(
                f"channel {name}: pixel type {kind} / sampling {x_sampling}x{y_sampling} unsupported"
            )
        channels.append((name, kind))
        offset = end + 1 + 16
    return channels


def _unrle(block: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(block):
        count = struct.unpack_from("b", block, i)[0]
        i += 1
        if count < 0:
            out += block[i : i - count]
            i -= count
        else:
            out += bytes([block[i]]) * (count + 1)
            i += 1
    return bytes(out)


def _unpredict(block: bytes) -> bytes:
    """Undo the byte predictor and the even/odd split that ZIP and RLE compression apply before packing."""
    t = np.frombuffer(block, dtype=np.uint8).astype(np.int64)
    t = (np.cumsum(t - 128) + 128) & 0xFF  # t[i] = t[i-1] + t[i] - 128 (mod 256), t[0] unchanged
    t = t.astype(np.uint8)
    half = (len(t) + 1) // 2
    out = np.empty_like(t)
    out[0::2], out[1::2] = t[:half], t[half:]
    return out.tobytes()


def _predict(raw: bytes) -> bytes:
    t = np.frombuffer(raw, dtype=np.uint8)
    split = np.concatenate([t[0::2], t[1::2]]).astype(np.int64)
    diff = split.copy()
    diff[1:] = (split[1:] - split[:-1] + 128) & 0xFF
    return diff.astype(np.uint8).tobytes()


def write_exr(path: str | os.PathLike, channels: dict[str, np.ndarray], compression: str = "ZIP") -> None:
    """Write (H, W) float16/float32/uint32 channels as a scanline EXR (``compression`` NONE or ZIP)."""
    codes = {"NONE": 0, "ZIP": 3}
    if compression not in codes:
        raise ValueError(f"compression must be one of {list(codes)}, got {compression!r}")
    code = codes[compression]
    kinds = {np.dtype("float16"): 1, np.dtype("float32"): 2, np.dtype("uint32"): 0}
    names = sorted(channels)  # EXR stores channels in alphabetical order
    arrays = [np.asarray(channels[n]) for n in names]
    height, width = arrays[0].shape
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3sii", kinds[a.dtype], 0, b"\0\0\0", 1, 1)
                      for n, a in zip(names, arrays)) + b"\0"  # fmt: skip

    def attribute(name: str, kind: str, value: bytes) -> bytes:
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

    window = struct.pack("<4i", 0, 0, width - 1, height - 1)
    header = b"".join([
        attribute("channels", "chlist", chlist),
        attribute("compression", "compression", bytes([code])),
        attribute("dataWindow", "box2i", window),
        attribute("displayWindow", "box2i", window),
        attribute("lineOrder", "lineOrder", b"\0"),
        attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        attribute("screenWindowCenter", "v2f", struct.pack("<2f", 0.0, 0.0)),
        attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
    ]) + b"\0"  # fmt: skip
    per_chunk = LINES_PER_CHUNK[code]
    chunks = []
    for row in range(0, height, per_chunk):
        raw = b"".join(a[line].astype(a.dtype.newbyteorder("<")).tobytes()
                       for line in range(row, min(row + per_chunk, height)) for a in arrays)  # fmt: skip
        packed = zlib.compress(_predict(raw)) if code else raw
        if code and len(packed) >= len(raw):
            packed = raw  # as OpenEXR does: a chunk that does not shrink is stored raw
        chunks.append(struct.pack("<ii", row, len(packed)) + packed)
    start = 8 + len(header) + 8 * len(chunks)
    offsets, position = [], start
    for chunk in chunks:
        offsets.append(position)
        position += len(chunk)
    blob = (
        struct.pack("<ii", MAGIC, 2) + header + struct.pack(f"<{len(offsets)}Q", *offsets) + b"".join(chunks)
    )
    Path(path).write_bytes(blob)
