"""The one on-disk format for image pairs: HDF5 shards written atomically and read lazily.

A shard is a single ``.h5`` file holding many pairs in *columnar* datasets (one dataset per field, the first
axis indexing pairs), so that the small per-pair metadata (overlap, scene) of a whole shard is read in one call
when a dataset is indexed, while images stay encoded (JPEG by default) until a DataLoader worker decodes them.
The full schema, its conventions and the versioning rule are documented in ``docs/data-format.md``.

Writing goes to ``<path>.tmp-<pid>`` and is renamed onto ``<path>`` only when the writer closes cleanly, so an
interrupted generation never leaves a half shard that a reader would pick up (``list_shards`` only sees
``*.h5``). Readers validate the schema on construction, then keep only the path and the small index: the
HDF5 handle is opened on first read in each process, which makes readers safe to pickle into DataLoader workers.

Every encoded image carries a CRC32 (schema version 2), checked on each read, so that bytes changed on disk
after writing (bit rot, a bad copy) become a counted ``CorruptPairError`` instead of silently different
pixels.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import math
import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import h5py
import numpy as np

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION: int = 3
"""Bumped whenever the meaning or layout of an existing field changes; adding a new optional field does not.
2: the required per-image checksums ``image_crc32``; 3: NaN marks an unknown value in ``K*``, ``pose*``,
``covis*``, ``overlap`` and the depths (docs/data-format.md, 'Versioning', 'Unknown values')."""
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2, 3)
"""Versions this code reads; version-1 shards have no checksums, so their images are not verified; shards
before version 3 have no unknown values."""

FORMAT_NAME = "croco-pairs"
IMAGE_FORMATS = ("jpeg", "png")

# Fields every pair has (columnar datasets of length pair_count).
IMAGE_FIELDS = ("image1", "image2")
IMAGE_BLOB = (
    "images"  # both encoded images of every pair, concatenated: image1 of pair 0, image2 of pair 0, ...
)
IMAGE_OFFSETS = "image_offsets"  # (N, 3) int64 byte offsets: image1 = [o0, o1), image2 = [o1, o2)
IMAGE_CRC32 = "image_crc32"  # (N, 2) uint32 zlib.crc32 of the encoded image1 / image2 bytes (schema >= 2)
CAMERA_FIELDS = ("K1", "K2", "pose1", "pose2")
SCALAR_FIELDS = ("covis12", "covis21", "overlap")
DEPTH_FIELDS = ("depth1", "depth2")
REQUIRED_FIELDS = IMAGE_FIELDS + CAMERA_FIELDS + SCALAR_FIELDS + ("scene",)
STORED_REQUIRED = (IMAGE_OFFSETS,) + CAMERA_FIELDS + SCALAR_FIELDS + ("scene",)
_COPY_BLOCK = 64 << 20
RESERVED_ATTRS = (
    "format",
    "schema_version",
    "source",
    "resolution",
    "fov_deg",
    "pair_count",
    "image_format",
    "jpeg_quality",
    "optional_fields",
)
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ShardError(ValueError):
    """A shard (or shard folder) cannot be used; the message is one line and names the file."""


class CorruptPairError(ShardError):
    """One pair inside an otherwise healthy shard cannot be decoded (names the file and the pair index)."""


class NoSpaceError(OSError):
    """The disk filled up while writing (errno ENOSPC); one line naming the path. The writer has already
    removed its temporary files, so finished shards stay as they are and nothing half-written is left."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC  # set after __init__ so that str() stays the one-line message


def is_no_space(error: BaseException) -> bool:
    """Whether ``error`` means the disk is full: errno ENOSPC from Python, or HDF5's text (h5py reports its
    write failures as an ``OSError`` without errno, the C errno only inside the message)."""
    if not isinstance(error, OSError):
        return False
    text = str(error)
    return error.errno == errno.ENOSPC or "errno = 28," in text or "No space left on device" in text


@dataclass
class PairRecord:
    """One training pair with its geometry, as written to and read from a shard.

    Images are (H, W, 3) uint8 RGB; ``image1`` is the view that gets masked and reconstructed, ``image2`` the
    reference view. ``K*`` are pinhole intrinsics in pixels, ``pose*`` camera-to-world transforms in OpenCV camera
    axes (x right, y down, z forward). Depth is metric depth along the camera z axis with 0 marking invalid
    pixels (stored as float16). ``extras`` carries per-pair task ground truth under dataset names of its own.

    Unknown values (schema version 3): ``None`` for a camera matrix or a co-visibility, NaN for a depth pixel;
    the shard stores them as NaN and reads them back as NaN (see ``is_unknown``), so that nothing is invented.
    """

    image1: np.ndarray
    image2: np.ndarray
    K1: np.ndarray | None
    K2: np.ndarray | None
    pose1: np.ndarray | None
    pose2: np.ndarray | None
    covis12: float | None
    covis21: float | None
    scene: str
    depth1: np.ndarray | None = None
    depth2: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def overlap(self) -> float:
        """The co-visibility used to select pairs: the smaller of the two directional fractions (NaN if unknown)."""
        if is_unknown(self.covis12) or is_unknown(self.covis21):
            return math.nan
        return float(min(self.covis12, self.covis21))


def is_unknown(value: Any) -> bool:
    """Whether a stored value is the schema's "unknown" marker: ``None`` (in a ``PairRecord``) or NaN (a whole
    NaN matrix or scalar, as a shard stores and reads it back)."""
    if value is None:
        return True
    array = np.asarray(value, dtype=np.float64)
    return bool(array.size) and bool(np.all(np.isnan(array)))


# --------------------------------------------------------------------------------------------- images


def encode_image(image: np.ndarray, image_format: str = "jpeg", jpeg_quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as JPEG or PNG bytes (the encoding every shard uses)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    buffer = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    if image_format == "jpeg":
        pil.save(buffer, format="JPEG", quality=int(jpeg_quality))
    elif image_format == "png":
        pil.save(buffer, format="PNG", compress_level=1)
    else:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return buffer.getvalue()


def check_encoded_image(data: bytes) -> None:
    """Raise ValueError unless ``data`` looks like a complete JPEG or PNG stream.

    libjpeg only *warns* about a truncated stream and returns a half-grey image, so a cut-off file would pass
    silently through decoding; checking the end-of-image marker turns it into a countable error.
    """
    if data[:2] == JPEG_SOI:
        if data.rstrip(b"\x00")[-2:] != _JPEG_EOI:
            raise ValueError("JPEG stream is truncated (no end-of-image marker)")
    elif data[:8] == _PNG_MAGIC:
        if b"IEND" not in data[-12:]:
            raise ValueError("PNG stream is truncated (no IEND chunk)")
    else:
        raise ValueError(f"not a JPEG or PNG stream (starts with {data[:4]!r})")


@functools.cache
def _simplejpeg() -> Any:
    """simplejpeg's ``decode_jpeg`` if installed, else None (then torchvision, then PIL, decode JPEGs)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg.decode_jpeg


@functools.cache
def _torchvision_decoder() -> Any:
    """torchvision's libjpeg-turbo/libpng decoding operator, or None where torchvision no longer ships it.

    The operator is called directly: the public wrapper adds a deprecation warning (torchvision 0.29 points to
    TorchCodec) whose cost alone is ~2 % of the per-pair budget.
    """
    try:
        import torch
        import torchvision.io  # noqa: F401  (registers torch.ops.image)

        return torch.ops.image.decode_image
    except (ImportError, AttributeError, RuntimeError):
        return None


def decode_image_tensor(data: bytes, buffer: np.ndarray | None = None) -> torch.Tensor:
    """Decode JPEG/PNG bytes to an (H, W, 3) uint8 RGB tensor (HWC, contiguous); ValueError if damaged.

    ``buffer`` (optional, a writable uint8 array of at least H*W*3 bytes) receives the pixels when the JPEG
    decoder supports it; the result is then a view of the buffer, valid until the buffer is reused. The
    DataLoader workers decode into two reused buffers, which keeps the decoded images hot in cache and saves
    fresh memory (page faults) per pair.

    Decoder choice, measured on 256x256 q95 JPEGs on one core (docs/benchmarks.md): simplejpeg (libjpeg-turbo
    through TurboJPEG) ~0.43 ms, torchvision ~0.60 ms, PIL ~0.81 ms, with identical pixels for the first two.
    The fastest available one decodes JPEGs; PNGs go through torchvision or PIL. HWC is libjpeg's native
    layout: a crop of it is a row-wise memcpy, while cropping a CHW view would be a strided gather ~8x slower.
    """
    import torch

    check_encoded_image(data)
    simplejpeg_decode = _simplejpeg() if data[:2] == JPEG_SOI else None
    if simplejpeg_decode is not None:
        try:
            return torch.from_numpy(simplejpeg_decode(data, colorspace="RGB", buffer=buffer))
        except ValueError as error:
            raise ValueError(f"cannot decode image: {error}") from None
    torchvision_decode = _torchvision_decoder()
    if torchvision_decode is not None:
        try:
            tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            chw = torchvision_decode(tensor, 3, False)  # 3 = ImageReadMode.RGB
        except RuntimeError as error:
            raise ValueError(f"cannot decode image: {str(error).splitlines()[0]}") from None
        return chw.permute(1, 2, 0).contiguous()  # a no-op: the memory is already HWC
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as pil:
            return torch.from_numpy(np.array(pil.convert("RGB")))
    except OSError as error:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot decode image: {error}") from None


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes to an (H, W, 3) uint8 RGB array."""
    return decode_image_tensor(data).numpy()


# --------------------------------------------------------------------------------------------- writing


def _as_attr(value: Any) -> Any:
    """Convert a user attribute to something HDF5 stores faithfully (nested containers become JSON text)."""
    if isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value)
    return "json:" + json.dumps(value)


def _from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class ShardWriter:
    """Write pairs into one shard; use as a context manager.

    Pairs are appended to ``<path>.tmp-<pid>``; ``close()`` records the pair count and renames the file onto
    ``path`` (``os.replace``, atomic on POSIX). Leaving the ``with`` block by an exception deletes the temporary
    file instead, so ``path`` either holds a complete shard or does not exist. The optional fields (depths,
    extras) present in the first record define the shard's field set; every later record must carry the same.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        source: str,
        resolution: tuple[int, int],
        fov_deg: float | None = None,
        image_format: str = "jpeg",
        jpeg_quality: int = 95,
        attrs: dict | None = None,
        compression: str | None = "lzf",
    ) -> None:
        self.path = Path(path)
        if image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"{self.path}: image_format must be one of {IMAGE_FORMATS}, got {image_format!r}"
            )
        if len(resolution) != 2 or min(resolution) <= 0:
            raise ValueError(f"{self.path}: resolution must be (height, width) > 0, got {resolution!r}")
        clash = sorted(set(attrs or {}) & set(RESERVED_ATTRS))
        if clash:  # checked before the temporary file exists
            raise ValueError(f"{self.path}: attrs {clash} are reserved by the shard schema")
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.image_format = image_format
        self.jpeg_quality = int(jpeg_quality)
        self.compression = compression
        self.tmp_path = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        # Encoded images are staged in a side file and copied into one *contiguous* dataset on close, which
        # lets readers fetch a pair's bytes with a single pread (see ShardReader.encoded_images).
        self._blob_path = self.tmp_path.with_name(self.tmp_path.name + ".images")
        self._file: h5py.File | None = None
        self._blob: io.BufferedWriter | None = None
        self._count = 0
        self._optional: tuple[str, ...] | None = None  # fixed by the first record
        self._shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._meta: dict[str, list] = {name: [] for name in CAMERA_FIELDS + ("covis12", "covis21", "scene")}
        self._offsets: list[tuple[int, int, int]] = []
        self._crc32: list[tuple[int, int]] = []
        self._blob_size = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.tmp_path, "w")
            file_attrs = self._file.attrs
            file_attrs["format"] = FORMAT_NAME
            file_attrs["schema_version"] = SCHEMA_VERSION
            file_attrs["source"] = str(source)
            file_attrs["resolution"] = np.asarray(self.resolution, dtype=np.int64)
            if fov_deg is not None:
                file_attrs["fov_deg"] = float(fov_deg)
            file_attrs["image_format"] = image_format
            file_attrs["jpeg_quality"] = self.jpeg_quality
            self.update_attrs(attrs or {})
            self._blob = open(self._blob_path, "wb")  # noqa: SIM115 (closed in close/abort)
        except BaseException as error:  # no `with` block owns the files yet: clean up here
            self._fail_write(error)
            raise

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        """Add or replace free-form file attributes (e.g. statistics known only at the end of a shard).

        Scalars, strings and numeric lists are stored as they are, anything else as JSON text; the schema's own
        attribute names are refused.
        """
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        clash = sorted(set(attrs) & set(RESERVED_ATTRS))
        if clash:
            raise ValueError(f"{self.path}: attrs {clash} are reserved by the shard schema")
        for key, value in attrs.items():
            self._file.attrs[key] = _as_attr(value)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _fail_write(self, error: BaseException) -> None:
        """Abort after a failed write; a full disk becomes a one-line ``NoSpaceError`` (raised from here),
        anything else is left for the caller to re-raise."""
        self.abort()
        if is_no_space(error):
            raise NoSpaceError(
                f"no space left on {self.path.parent} (while writing {self.path.name}; its temporary files "
                "were removed): free some space and write it again"
            ) from error

    def __len__(self) -> int:
        return self._count

    # -- validation helpers ------------------------------------------------------------------------------

    def _fail(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: pair {self._count}: {message}")

    def _check_image(self, name: str, image: np.ndarray) -> None:
        expected = (*self.resolution, 3)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != expected:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise self._fail(f"{name} must be uint8 of shape {expected}, got {shape} {dtype}")

    def _check_matrix(self, name: str, value: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
        """A finite matrix, or all-NaN for an unknown one (``None`` or all-NaN given)."""
        if is_unknown(value):
            return np.full(shape, np.nan)
        array = np.asarray(value, dtype=np.float64)
        if array.shape != shape or not np.all(np.isfinite(array)):
            raise self._fail(
                f"{name} must be a finite {shape} matrix (or None: unknown), got shape {array.shape}"
            )
        return array

    @staticmethod
    def _storage_dtype(name: str, array: np.ndarray) -> np.dtype:
        if name in DEPTH_FIELDS:
            return np.dtype(np.float16)
        if array.dtype.kind == "f":
            return np.dtype(np.float32)
        if array.dtype.kind in "biu":
            return array.dtype
        raise ValueError(f"unsupported dtype {array.dtype} for field {name!r}")

    # -- writing ------------------------------------------------------------------------------------------

    def _append_array(self, name: str, value: np.ndarray) -> None:
        assert self._file is not None
        array = np.asarray(value)
        if name not in self._file:
            dtype = self._storage_dtype(name, array)
            self._shapes[name] = (array.shape, dtype)
            self._file.create_dataset(
                name,
                shape=(0, *array.shape),
                maxshape=(None, *array.shape),
                dtype=dtype,
                chunks=(1, *array.shape),
                compression=self.compression,
            )
        _, dtype = self._shapes[name]
        dataset = self._file[name]
        dataset.resize(self._count + 1, axis=0)
        dataset[self._count] = array.astype(dtype, copy=False)

    def add(self, record: PairRecord) -> None:
        """Validate and append one pair (images are encoded here)."""
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        self._check_image("image1", record.image1)
        self._check_image("image2", record.image2)
        cameras = {
            "K1": self._check_matrix("K1", record.K1, (3, 3)),
            "K2": self._check_matrix("K2", record.K2, (3, 3)),
            "pose1": self._check_matrix("pose1", record.pose1, (4, 4)),
            "pose2": self._check_matrix("pose2", record.pose2, (4, 4)),
        }
        covis = {}
        for name in ("covis12", "covis21"):
            raw = getattr(record, name)
            value = math.nan if is_unknown(raw) else float(raw)
            if not (math.isnan(value) or 0.0 <= value <= 1.0):
                raise self._fail(f"{name} must be a fraction in [0, 1] (or None: unknown), got {value}")
            covis[name] = value
        if not isinstance(record.scene, str) or not record.scene:
            raise self._fail(f"scene must be a non-empty string, got {record.scene!r}")
        optional: dict[str, np.ndarray] = {}
        for name in DEPTH_FIELDS:
            depth = getattr(record, name)
            if depth is not None:
                depth = np.asarray(depth)
                if depth.shape != self.resolution:
                    raise self._fail(f"{name} must have shape {self.resolution}, got {depth.shape}")
                optional[name] = depth
        for name, value in record.extras.items():
            if not _FIELD_NAME.match(name) or name in REQUIRED_FIELDS or name in DEPTH_FIELDS:
                raise self._fail(f"extras key {name!r} must be an identifier not used by the schema")
            optional[name] = np.asarray(value)
        names = tuple(sorted(optional))
        if self._optional is not None and names != self._optional:
            raise self._fail(f"optional fields {list(names)} differ from the shard's {list(self._optional)}")
        for name, value in optional.items():  # validate everything before writing anything
            if value.dtype.kind not in "biuf":
                raise self._fail(f"{name} has unsupported dtype {value.dtype} (expected bool, int or float)")
            if name in self._shapes and value.shape != self._shapes[name][0]:
                raise self._fail(
                    f"{name} has shape {value.shape}, the shard's first pair set {self._shapes[name][0]}"
                )
        encoded = [
            encode_image(getattr(record, n), self.image_format, self.jpeg_quality) for n in IMAGE_FIELDS
        ]
        assert self._blob is not None
        try:
            for name, value in optional.items():
                self._append_array(name, value)
            self._blob.write(encoded[0])
            self._blob.write(encoded[1])
        except OSError as error:
            self._fail_write(error)
            raise
        self._optional = names
        start = self._blob_size
        self._blob_size += len(encoded[0]) + len(encoded[1])
        self._offsets.append((start, start + len(encoded[0]), self._blob_size))
        self._crc32.append((zlib.crc32(encoded[0]), zlib.crc32(encoded[1])))
        for name, value in cameras.items():
            self._meta[name].append(value)
        self._meta["covis12"].append(covis["covis12"])
        self._meta["covis21"].append(covis["covis21"])
        self._meta["scene"].append(record.scene)
        self._count += 1

    def close(self) -> Path:
        """Write the per-pair metadata and the pair count, then atomically rename onto ``path``."""
        if self._file is None:
            if self.path.exists():
                return self.path
            raise ValueError(f"{self.path}: writer was aborted, nothing was written")
        try:
            handle = self._file
            assert self._blob is not None
            self._blob.close()
            images = handle.create_dataset(IMAGE_BLOB, shape=(self._blob_size,), dtype=np.uint8)
            with open(self._blob_path, "rb") as blob:
                for begin in range(0, self._blob_size, _COPY_BLOCK):
                    chunk = np.frombuffer(blob.read(_COPY_BLOCK), dtype=np.uint8)
                    images[begin : begin + len(chunk)] = chunk
            offsets = np.asarray(self._offsets, dtype=np.int64).reshape(self._count, 3)
            handle.create_dataset(IMAGE_OFFSETS, data=offsets)
            checksums = np.asarray(self._crc32, dtype=np.uint32).reshape(self._count, 2)
            handle.create_dataset(IMAGE_CRC32, data=checksums)
            for name in CAMERA_FIELDS:
                shape = (self._count, 3, 3) if name.startswith("K") else (self._count, 4, 4)
                data = np.asarray(self._meta[name], dtype=np.float64).reshape(shape)
                handle.create_dataset(name, data=data)
            covis12 = np.asarray(self._meta["covis12"], dtype=np.float32)
            covis21 = np.asarray(self._meta["covis21"], dtype=np.float32)
            handle.create_dataset("covis12", data=covis12)
            handle.create_dataset("covis21", data=covis21)
            handle.create_dataset("overlap", data=np.minimum(covis12, covis21))
            handle.create_dataset(
                "scene", data=np.asarray(self._meta["scene"], dtype=object), dtype=h5py.string_dtype("utf-8")
            )
            handle.attrs["optional_fields"] = "json:" + json.dumps(list(self._optional or ()))
            handle.attrs["pair_count"] = self._count
            handle.close()
            self._file = None
            with open(self.tmp_path, "rb+") as f:  # on disk before the rename makes it a finished shard
                os.fsync(f.fileno())
            os.replace(self.tmp_path, self.path)
            self._blob_path.unlink(missing_ok=True)
        except BaseException as error:
            self._fail_write(error)
            raise
        return self.path

    def abort(self) -> None:
        """Drop everything written so far (used when the ``with`` block fails).

        Never raises: it runs while another error (often a full disk, where closing fails too) propagates, and
        each step is tried on its own so that the HDF5 file is closed and both temporary files are removed
        even when closing the image file fails."""
        blob, handle = self._blob, self._file
        self._blob = self._file = None
        for resource in (blob, handle):
            if resource is not None:
                with contextlib.suppress(Exception):
                    resource.close()
        for path in (self.tmp_path, self._blob_path):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- reading


class _OpenShards:
    """Per-process LRU of readers holding open files, so that thousands of shards never exhaust the
    file-descriptor limit (every DataLoader worker reads from every shard)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pid = os.getpid()
        self.readers: OrderedDict[int, ShardReader] = OrderedDict()

    def touch(self, reader: ShardReader) -> None:
        if self.pid != os.getpid():  # inherited through fork: the parent's readers are not ours to close
            self.readers, self.pid = OrderedDict(), os.getpid()
        self.readers[id(reader)] = reader
        self.readers.move_to_end(id(reader))
        while len(self.readers) > self.limit:
            _, oldest = self.readers.popitem(last=False)
            oldest.close()

    def forget(self, reader: ShardReader) -> None:
        self.readers.pop(id(reader), None)


MAX_OPEN_SHARDS = 128
_OPEN_SHARDS = _OpenShards(MAX_OPEN_SHARDS)


class ShardReader:
    """Random access to the pairs of one shard.

    The constructor opens the file once to validate it (one-line ``ShardError`` naming the file otherwise) and
    caches the small index (``overlap``, ``scene``, checksums, attributes); the HDF5 handle itself is opened
    lazily on the first ``read`` in each process and is never pickled, so a reader can be handed to DataLoader
    workers. ``verify_checksums`` (default on) checks each image's CRC32 where the shard stores one (schema
    version >= 2); turning it off only serves to measure its cost (``croco.bench.data``).
    """

    def __init__(self, path: str | os.PathLike, *, verify_checksums: bool = True) -> None:
        self.path = Path(path)
        self.verify_checksums = bool(verify_checksums)
        self._file: h5py.File | None = None
        self._fd: int | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        if not self.path.is_file():
            raise ShardError(f"{self.path}: shard file does not exist")
        try:
            with h5py.File(self.path, "r", locking=False) as handle:
                self._load_index(handle)
        except ShardError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ShardError(
                f"{self.path}: unreadable HDF5 shard (truncated or damaged?): {first_line}"
            ) from None

    def _load_index(self, handle: h5py.File) -> None:
        raw = {key: _from_attr(value) for key, value in handle.attrs.items()}
        if raw.get("format") != FORMAT_NAME or "schema_version" not in raw:
            raise ShardError(
                f"{self.path}: not a CroCo pair shard (attribute format={FORMAT_NAME!r} missing)"
            )
        version = raw["schema_version"]
        if version not in READABLE_SCHEMA_VERSIONS:
            readable = ", ".join(str(v) for v in READABLE_SCHEMA_VERSIONS)
            raise ShardError(
                f"{self.path}: schema version {version}, this code reads versions {readable} "
                "(see docs/data-format.md, 'Versioning')"
            )
        if "pair_count" not in raw:
            raise ShardError(f"{self.path}: no pair_count attribute (the writer did not finish)")
        count = int(raw["pair_count"])
        for name in STORED_REQUIRED + tuple(raw.get("optional_fields", [])):
            if name not in handle:
                raise ShardError(f"{self.path}: dataset {name!r} is missing")
            if handle[name].shape[0] != count:
                raise ShardError(
                    f"{self.path}: dataset {name!r} has {handle[name].shape[0]} rows, pair_count is {count}"
                )
        if IMAGE_BLOB not in handle:
            raise ShardError(f"{self.path}: dataset {IMAGE_BLOB!r} is missing")
        blob = handle[IMAGE_BLOB]
        offsets = handle[IMAGE_OFFSETS][()].astype(np.int64)
        consistent = offsets.shape == (count, 3) and (
            count == 0 or (offsets[-1, 2] <= blob.shape[0] and bool(np.all(np.diff(offsets, axis=1) >= 0)))
        )
        if not consistent:
            raise ShardError(
                f"{self.path}: {IMAGE_OFFSETS!r} does not index the {blob.shape[0]}-byte image blob"
            )
        self._offsets = offsets
        # version 1: no checksums, images are not verified. Python ints: indexing numpy per read costs ~1 us
        self._crc32: list[tuple[int, int]] | None = None
        if version >= 2:
            if IMAGE_CRC32 not in handle or handle[IMAGE_CRC32].shape != (count, 2):
                found = handle[IMAGE_CRC32].shape if IMAGE_CRC32 in handle else "missing"
                raise ShardError(
                    f"{self.path}: dataset {IMAGE_CRC32!r} must have shape ({count}, 2) in a "
                    f"version-{version} shard, got {found}"
                )
            self._crc32 = [(int(a), int(b)) for a, b in handle[IMAGE_CRC32][()].astype(np.uint32).tolist()]
        # A contiguous, unfiltered blob can be read with os.pread at a fixed file offset, bypassing HDF5's
        # per-call overhead (6 us instead of ~45 us per pair); anything else is read through h5py.
        layout = blob.id.get_create_plist().get_layout()
        self._blob_file_offset: int | None = None
        if layout == h5py.h5d.CONTIGUOUS and blob.id.get_offset() is not None:
            self._blob_file_offset = int(blob.id.get_offset())
            if self._blob_file_offset + blob.shape[0] > self.path.stat().st_size:
                raise ShardError(f"{self.path}: file is shorter than its image data (truncated copy?)")
        self.attrs: dict[str, Any] = raw
        self.resolution: tuple[int, int] = tuple(raw["resolution"])  # type: ignore[assignment]
        self.optional_fields: tuple[str, ...] = tuple(raw.get("optional_fields", []))
        self.overlap: np.ndarray = handle["overlap"][()].astype(np.float32)
        self.scene: list[str] = list(handle["scene"].asstr()[()])
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"ShardReader({str(self.path)!r}, pairs={self._count}, source={self.attrs.get('source')!r})"

    @property
    def fields(self) -> tuple[str, ...]:
        """Every name ``read`` accepts."""
        return REQUIRED_FIELDS + self.optional_fields

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_file=None, _fd=None, _pid=None, _datasets={})
        return state

    def _own_process(self) -> None:
        """Forget handles inherited from another process (after fork): each process opens its own."""
        if self._pid != os.getpid():
            self._file, self._fd, self._datasets = None, None, {}
            self._pid = os.getpid()

    def _handle(self) -> h5py.File:
        """The HDF5 handle of this process, opened on first use."""
        self._own_process()
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r", locking=False, rdcc_nbytes=0)
            except OSError as error:
                raise ShardError(f"{self.path}: cannot reopen shard: {str(error).splitlines()[0]}") from None
            _OPEN_SHARDS.touch(self)
        return self._file

    def _raw_fd(self) -> int:
        """A plain file descriptor of this process for ``pread`` of the contiguous image blob."""
        self._own_process()
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as error:
                raise ShardError(f"{self.path}: cannot reopen shard: {error}") from None
        _OPEN_SHARDS.touch(self)  # every read marks the shard as recently used
        return self._fd

    def _dataset(self, name: str) -> h5py.Dataset:
        """Dataset lookup is surprisingly slow in h5py (tens of microseconds), so handles are cached."""
        handle = self._handle()
        if name not in self._datasets:
            self._datasets[name] = handle[name]
        return self._datasets[name]

    def close(self) -> None:
        """Release this process's file handles (they reopen on the next read)."""
        if self._pid == os.getpid():
            if self._file is not None:
                self._file.close()
            if self._fd is not None:
                os.close(self._fd)
        self._file, self._fd, self._datasets = None, None, {}
        _OPEN_SHARDS.forget(self)

    def _check_index(self, i: int) -> int:
        index = int(i)
        if not 0 <= index < self._count:
            raise IndexError(f"{self.path}: pair index {i} out of range [0, {self._count})")
        return index

    def encoded_images(self, i: int) -> tuple[bytes, bytes]:
        """The stored (still encoded) bytes of image1 and image2 of pair ``i``.

        ``CorruptPairError`` when the bytes cannot be read or no longer match their stored CRC32 (a flipped
        bit in a JPEG mostly decodes without any error, to wrong pixels). The check costs ~4.3 us per 17 KiB
        image, 2-3 % of reading and decoding it (docs/data-format.md, "Guarantees and errors")."""
        index = self._check_index(i)
        start, middle, end = (int(v) for v in self._offsets[index])
        try:
            if self._blob_file_offset is not None:
                data = os.pread(self._raw_fd(), end - start, self._blob_file_offset + start)
                if len(data) != end - start:
                    raise OSError(f"short read ({len(data)} of {end - start} bytes)")
            else:
                data = self._dataset(IMAGE_BLOB)[start:end].tobytes()
        except OSError as error:
            raise CorruptPairError(f"{self.path}: pair {index}: cannot read images: {error}") from None
        first, second = data[: middle - start], data[middle - start :]
        if self._crc32 is not None and self.verify_checksums:
            for name, image, stored in zip(IMAGE_FIELDS, (first, second), self._crc32[index]):
                if (actual := zlib.crc32(image)) != stored:
                    try:  # name the damage more precisely where the stream shows it (a cut-off copy)
                        check_encoded_image(image)
                    except ValueError as error:
                        raise CorruptPairError(f"{self.path}: pair {index} {name}: {error}") from None
                    raise CorruptPairError(
                        f"{self.path}: pair {index} {name}: checksum mismatch (stored CRC32 {stored:08x}, "
                        f"the bytes give {actual:08x}): the image changed on disk after writing"
                    )
        return first, second

    def decode(self, data: bytes, i: int, name: str, buffer: np.ndarray | None = None) -> torch.Tensor:
        """Decode one stored image of pair ``i`` to an (H, W, 3) uint8 tensor (see ``decode_image_tensor``).

        ``CorruptPairError`` naming the file, the pair and the field if the stream is damaged or has the wrong size.
        """
        try:
            image = decode_image_tensor(data, buffer)
        except ValueError as error:
            raise CorruptPairError(f"{self.path}: pair {i} {name}: {error}") from None
        if tuple(image.shape[:2]) != self.resolution:
            size = tuple(image.shape[:2])
            raise CorruptPairError(
                f"{self.path}: pair {i} {name}: decoded size {size}, shard resolution {self.resolution}"
            )
        return image

    def read(self, i: int, *, fields: Iterable[str] = IMAGE_FIELDS) -> dict[str, Any]:
        """Return the requested fields of pair ``i``: decoded uint8 images, float arrays, floats, the scene.

        Depths come back as float32 (stored as float16); unknown field names raise ``KeyError``.
        """
        index = self._check_index(i)
        wanted = tuple(fields)
        unknown = [name for name in wanted if name not in self.fields]
        if unknown:
            raise KeyError(f"{self.path}: no field(s) {unknown}; this shard has {list(self.fields)}")
        out: dict[str, Any] = {}
        if any(name in IMAGE_FIELDS for name in wanted):
            encoded = dict(zip(IMAGE_FIELDS, self.encoded_images(index)))
        for name in wanted:
            if name in IMAGE_FIELDS:
                out[name] = self.decode(encoded[name], index, name).numpy()
            elif name == "scene":
                out[name] = self.scene[index]
            elif name == "overlap":
                out[name] = float(self.overlap[index])
            elif name in ("covis12", "covis21"):
                out[name] = float(self._dataset(name)[index])
            else:
                try:
                    value = self._dataset(name)[index]
                except OSError as error:
                    raise CorruptPairError(
                        f"{self.path}: pair {index}: cannot read {name}: {error}"
                    ) from None
                out[name] = value.astype(np.float32) if name in DEPTH_FIELDS else value
        return out

    def read_record(self, i: int) -> PairRecord:
        """Everything stored for pair ``i`` as a ``PairRecord`` (the inverse of ``ShardWriter.add``)."""
        data = self.read(i, fields=self.fields)
        return PairRecord(
            image1=data["image1"],
            image2=data["image2"],
            K1=data["K1"],
            K2=data["K2"],
            pose1=data["pose1"],
            pose2=data["pose2"],
            covis12=data["covis12"],
            covis21=data["covis21"],
            scene=data["scene"],
            depth1=data.get("depth1"),
            depth2=data.get("depth2"),
            extras={n: data[n] for n in self.optional_fields if n not in DEPTH_FIELDS},
        )


def finished_shards(folder: str | os.PathLike) -> list[Path]:
    """The finished shards (``*.h5``) of a folder, sorted by name; none when the folder does not exist (yet).
    Temporary files of unfinished writers (``*.h5.tmp-<pid>``) are never listed."""
    path = Path(folder)
    return sorted(p for p in path.glob("*.h5") if p.is_file()) if path.is_dir() else []


def list_shards(folder: str | os.PathLike) -> list[Path]:
    """Sorted ``*.h5`` files of a folder; ``ShardError`` if the folder is missing or holds no shard.

    Temporary files of unfinished writers (``*.h5.tmp-<pid>``) are never listed.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ShardError(f"{path}: shard folder does not exist")
    shards = finished_shards(path)
    if not shards:
        raise ShardError(f"{path}: no shards (*.h5) in folder")
    return shards
