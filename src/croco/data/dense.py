"""Datasets of the monocular downstream tasks: depth estimation, semantic segmentation, image classification.

Every dataset returns, without a transform, a *raw* sample: ``"image"`` uint8 (3, H, W) RGB, the target at the
image's own size and ``"name"`` (a string naming the sample). The target is one of

- ``"depth"``: float32 (1, H, W), metres along the camera z axis, 0 = no ground truth;
- ``"segmentation"``: int64 (H, W) class ids, ``IGNORE_INDEX`` (255) = pixel without a label;
- ``"label"``: int64 scalar tensor (classification).

``croco.data.dense_transforms.DenseTransform`` turns a raw sample into the training sample (fixed size, float
ImageNet-normalised image); each dataset takes such a ``transform`` (or None for raw samples) and exposes
``num_classes`` / ``class_names`` (None for depth) and the ``targets`` it supports.

Sources and their on-disk layouts:

- ``SyntheticViews``: the project's own task shards (``croco.data.shards``) written by the embedded generator
  with ``task=depth`` (``python generate.py source=synthetic task=depth out=<folder> pairs=<n>``). Each pair
  gives two samples (view 1 and view 2), with ``depth1/2`` and per-pixel surface classes ``semantics1/2`` whose
  names are the shard attribute ``surface_classes`` (class 0 = ``void``, nothing hit). Train / val split by
  scene, as for pretraining (``croco.data.index.is_val_scene``).
- ``NYUv2``: the NYU Depth V2 labelled dataset (Silberman et al., ECCV 2012): ``nyu_depth_v2_labeled.mat``, a
  MATLAB v7.3 (HDF5) file whose ``images`` (1449, 3, 640, 480) uint8 and ``depths`` (1449, 640, 480) float32
  (metres) are stored column-major, i.e. transposed, plus ``splits.mat`` with the standard 795 / 654 split
  (``trainNdxs`` / ``testNdxs``, 1-based).
- ``ADE20K``: the ADE20K SceneParsing challenge release (``ADEChallengeData2016``): ``images/{training,
  validation}/*.jpg`` and ``annotations/{training,validation}/*.png`` (uint8, 0 = other / unlabelled,
  1..150 = the 150 classes); optional ``objectInfo150.txt`` / ``objectInfo150.csv`` for the class names.
- ``ClassFolders``: the ImageNet folder layout ``root/{train,val}/<class>/<image>`` (jpg / jpeg / png).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import torch

from croco.data.index import is_val_scene
from croco.data.shards import ShardError, ShardReader, list_shards
from croco.data.splits import TargetDataset, Transform

log = logging.getLogger(__name__)

__all__ = [
    "ADE20K",
    "BARE_CLASSES",
    "IGNORE_INDEX",
    "TARGETS",
    "TARGET_KEYS",
    "ClassFolders",
    "DenseDataset",
    "NYUv2",
    "SyntheticViews",
    "dominant_class",
    "load_image",
]

IGNORE_INDEX: int = 255
"""Segmentation pixels with this value carry no label (loss and metrics skip them)."""

TARGETS: tuple[str, ...] = ("depth", "segmentation", "classification")
TARGET_KEYS: dict[str, str] = {"depth": "depth", "segmentation": "segmentation", "classification": "label"}

BARE_CLASSES: tuple[str, ...] = ("void", "floor", "wall", "ceiling")
"""Surface classes of an empty room: a synthetic view's classification label is its dominant *other* class."""

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
GENERATE_HINT = "generate it with `python generate.py source=synthetic task=depth out=<folder>`"
NYU_URL = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
NYU_SPLITS_URL = "http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat"


def _split_kind(split: str, allowed: Sequence[str] = ("train", "val", "test")) -> str:
    """'train' or 'val' ('test' reads the held-out split too); a one-line error otherwise."""
    if split not in allowed:
        raise ValueError(f"split={split!r}: expected one of {list(allowed)}")
    return "train" if split == "train" else "val"


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to uint8 (3, H, W) RGB (palette, grey and CMYK images are converted)."""
    from PIL import Image

    try:
        with Image.open(path) as pil:
            array = np.asarray(pil.convert("RGB"))
    except OSError as error:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: cannot decode image: {error}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _depth_tensor(depth: np.ndarray) -> torch.Tensor:
    """(H, W) metres -> float32 (1, H, W); non-finite values become 0 (= no ground truth)."""
    depth = np.nan_to_num(np.asarray(depth, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return torch.from_numpy(np.ascontiguousarray(depth)).unsqueeze(0)


def dominant_class(semantics: np.ndarray, ignored: Sequence[int]) -> int | None:
    """The most frequent class id of ``semantics`` outside ``ignored`` (lowest id on ties); None if none."""
    counts = np.bincount(np.asarray(semantics, dtype=np.int64).ravel())
    counts[[i for i in ignored if i < len(counts)]] = 0
    return int(counts.argmax()) if counts.any() else None


class DenseDataset(TargetDataset):
    """A monocular dataset (``TargetDataset``) that also knows its classes."""

    def __init__(self, target: str, transform: Transform | None) -> None:
        super().__init__(target, transform)
        self.num_classes: int | None = None
        self.class_names: list[str] | None = None

    @classmethod
    def class_info(cls, root: str | os.PathLike, target: str) -> tuple[int | None, list[str] | None]:
        """(num_classes, class_names) of ``target`` read cheaply (attributes, folder names), without indexing."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- synthetic


def _surface_classes(reader: ShardReader) -> list[str]:
    classes = reader.attrs.get("surface_classes") or []
    if not classes or classes[0] != "void":
        raise ValueError(
            f"{reader.path}: shard attribute surface_classes is missing or does not start with 'void' "
            f"(a pretraining or habitat shard?); expected a task shard: {GENERATE_HINT}"
        )
    return [str(name) for name in classes]


def _shard_readers(folder: Path, needed: Sequence[str], first_only: bool = False) -> list[ShardReader]:
    """Open every shard of ``folder`` (or only the first) and check it has the ``needed`` fields; one-line
    errors otherwise."""
    try:
        paths = list_shards(folder)
    except ShardError as error:
        raise ValueError(f"{error}; expected task shards with depth and semantics: {GENERATE_HINT}") from None
    readers = [ShardReader(path) for path in (paths[:1] if first_only else paths)]
    for reader in readers:
        missing = [name for name in needed if name not in reader.fields]
        if missing:
            raise ValueError(
                f"{reader.path}: no field(s) {missing} (a pretraining shard?); expected a task shard: "
                f"{GENERATE_HINT}"
            )
    return readers


class SyntheticViews(DenseDataset):
    """Single views of the embedded generator's task shards (two samples per pair), split by scene.

    Targets: ``depth`` (metres), ``segmentation`` (surface classes, ``void`` -> ``IGNORE_INDEX``; class ids are
    the shard's, so ``num_classes`` counts ``void`` although it is never a target) and ``classification``
    (the view's dominant class outside ``BARE_CLASSES``; views showing only bare surfaces are left out).
    """

    targets = TARGETS

    def __init__(
        self,
        folder: str | os.PathLike,
        split: str,
        target: str,
        val_fraction: float = 0.04,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(target, transform)
        self.folder = Path(folder)
        self.split = split
        want_val = _split_kind(split) == "val"
        needed = {"depth": ("depth1", "depth2")}.get(target, ("semantics1", "semantics2"))
        self.readers = _shard_readers(self.folder, needed)
        classes = self.check_classes(self.readers) if target != "depth" else None
        rows: list[tuple[int, int, int]] = []  # (shard, row, view)
        split_of: dict[str, bool] = {}
        for shard, reader in enumerate(self.readers):
            for row, scene in enumerate(reader.scene):
                if split_of.setdefault(scene, is_val_scene(scene, val_fraction)) == want_val:
                    rows += [(shard, row, 1), (shard, row, 2)]
        self.scenes = sorted(scene for scene, is_val in split_of.items() if is_val == want_val)
        index = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        self.labels: np.ndarray | None = None
        self.dropped = 0
        if target == "segmentation":
            self.class_names = classes
            self.num_classes = len(classes)
        elif target == "classification":
            assert classes is not None
            self.class_names = [name for name in classes if name not in BARE_CLASSES]
            self.num_classes = len(self.class_names)
            index, self.labels = self._label_views(index, classes)
        self.index = index

    @staticmethod
    def check_classes(readers: Sequence[ShardReader]) -> list[str]:
        """The surface class names, identical in every shard (ids index this list)."""
        classes = _surface_classes(readers[0])
        for reader in readers[1:]:
            if _surface_classes(reader) != classes:
                raise ValueError(
                    f"{reader.path}: surface_classes differ from those of {readers[0].path}; "
                    "expected shards of one generator version in a folder"
                )
        return classes

    @classmethod
    def class_info(cls, folder: str | os.PathLike, target: str) -> tuple[int | None, list[str] | None]:
        """(num_classes, class_names) from the first shard's attributes, without indexing anything."""
        if target == "depth":
            return None, None
        (reader,) = _shard_readers(Path(folder), ("semantics1",), first_only=True)
        classes = _surface_classes(reader)
        if target == "classification":
            classes = [name for name in classes if name not in BARE_CLASSES]
        return len(classes), classes

    def _label_views(self, index: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Dominant non-bare class of every view (read once, kept on the instance); bare views are dropped."""
        bare_ids = [i for i, name in enumerate(classes) if name in BARE_CLASSES]
        kept_ids = [i for i, name in enumerate(classes) if name not in BARE_CLASSES]
        to_label = {class_id: label for label, class_id in enumerate(kept_ids)}
        keep, labels = [], []
        for position, (shard, row, view) in enumerate(index):
            semantics = self.readers[shard].read(int(row), fields=(f"semantics{view}",))[f"semantics{view}"]
            dominant = dominant_class(semantics, bare_ids)
            if dominant is None:
                continue
            if dominant not in to_label:
                raise ValueError(
                    f"{self.readers[shard].path}: pair {row} semantics{view} holds class id {dominant}, "
                    f"beyond the {len(classes)} surface_classes"
                )
            keep.append(position)
            labels.append(to_label[dominant])
        self.dropped = len(index) - len(keep)
        if self.dropped:
            log.info(
                "%s (%s): %d of %d views show only %s and are left out of classification",
                self.folder, self.split, self.dropped, len(index), "/".join(BARE_CLASSES),
            )  # fmt: skip
        return index[keep], np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def raw(self, index: int) -> dict[str, Any]:
        shard, row, view = (int(v) for v in self.index[index])
        reader = self.readers[shard]
        fields = [f"image{view}"]
        if self.target == "depth":
            fields.append(f"depth{view}")
        elif self.target == "segmentation":
            fields.append(f"semantics{view}")
        data = reader.read(row, fields=fields)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(data[f"image{view}"]).permute(2, 0, 1).contiguous(),
            "name": f"{reader.scene[row]}/{reader.path.stem}-{row:05d}/view{view}",
        }
        if self.target == "depth":
            sample["depth"] = _depth_tensor(data[f"depth{view}"])
        elif self.target == "segmentation":
            segmentation = torch.from_numpy(data[f"semantics{view}"].astype(np.int64))
            segmentation[segmentation == 0] = IGNORE_INDEX  # void: the ray hit nothing
            sample["segmentation"] = segmentation
        else:
            assert self.labels is not None
            sample["label"] = torch.tensor(int(self.labels[index]), dtype=torch.int64)
        return sample


# --------------------------------------------------------------------------------------------- NYU Depth V2


def _read_split_indices(path: Path, name: str) -> np.ndarray:
    """1-based MATLAB index vector ``name`` of ``splits.mat`` (v5 via scipy, v7.3 via h5py) -> 0-based."""
    values: Any = None
    try:
        import scipy.io

        values = scipy.io.loadmat(path, variable_names=[name]).get(name)
    except (ImportError, NotImplementedError, ValueError):  # scipy refuses v7.3 files: they are HDF5
        try:
            with h5py.File(path, "r", locking=False) as handle:
                values = handle[name][()] if name in handle else None
        except OSError:
            raise ValueError(f"{path}: neither a MATLAB v5 nor a v7.3 (HDF5) file") from None
    if values is None:
        raise ValueError(
            f"{path}: no variable {name!r}; expected the standard NYUv2 split (trainNdxs, testNdxs)"
        )
    return np.asarray(values).astype(np.int64).ravel() - 1


class NYUv2(DenseDataset):
    """NYU Depth V2 labelled frames (480x640), depth in metres, standard 795 train / 654 test split.

    The HDF5 handle is opened on the first read in each process and never pickled (DataLoader workers).
    """

    targets = ("depth",)
    FILE = "nyu_depth_v2_labeled.mat"
    SPLITS = "splits.mat"

    def __init__(self, root: str | os.PathLike, split: str, transform: Transform | None = None) -> None:
        super().__init__("depth", transform)
        self.root = Path(root)
        self.split = split
        self.path = self.root / self.FILE
        splits_path = self.root / self.SPLITS
        if not self.path.is_file():
            raise ValueError(f"{self.path}: file not found; download {self.FILE} from {NYU_URL}")
        if not splits_path.is_file():
            raise ValueError(f"{splits_path}: file not found; download {self.SPLITS} from {NYU_SPLITS_URL}")
        self.count = self._check_file()
        name = "trainNdxs" if _split_kind(split) == "train" else "testNdxs"
        self.indices = _read_split_indices(splits_path, name)
        bad = self.indices[(self.indices < 0) | (self.indices >= self.count)]
        if len(bad):
            raise ValueError(
                f"{splits_path}: {name} holds index {int(bad[0]) + 1} outside 1..{self.count} of {self.path.name}"
            )
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @classmethod
    def class_info(cls, root: str | os.PathLike, target: str) -> tuple[int | None, list[str] | None]:
        return None, None

    def _check_file(self) -> int:
        """Number of frames; one-line errors for a file that is not the labelled dataset."""
        try:
            with h5py.File(self.path, "r", locking=False) as handle:
                missing = [
                    name for name in ("images", "depths") if not isinstance(handle.get(name), h5py.Dataset)
                ]
                if missing:
                    raise ValueError(
                        f"{self.path}: no dataset {missing[0]!r}; expected the NYU Depth V2 labelled .mat"
                    )
                images, depths = handle["images"].shape, handle["depths"].shape
        except OSError as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{self.path}: not an HDF5 (MATLAB v7.3) file: {first_line}") from None
        if len(images) != 4 or images[1] != 3 or depths != (images[0], *images[2:]):
            raise ValueError(
                f"{self.path}: images {images} / depths {depths}; expected (N, 3, W, H) uint8 and (N, W, H)"
            )
        return int(images[0])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None)
        return state

    def _handle(self) -> h5py.File:
        if self._pid != os.getpid():  # inherited through fork: open our own
            self._file, self._pid = None, os.getpid()
        if self._file is None:
            self._file = h5py.File(self.path, "r", locking=False)
        return self._file

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, index: int) -> dict[str, Any]:
        frame = int(self.indices[index])
        handle = self._handle()
        image = np.ascontiguousarray(handle["images"][frame].transpose(0, 2, 1))  # (3, W, H) -> (3, H, W)
        depth = handle["depths"][frame].T  # (W, H) -> (H, W)
        return {
            "image": torch.from_numpy(image),
            "depth": _depth_tensor(depth),
            "name": f"nyu_{frame + 1:04d}",
        }


# --------------------------------------------------------------------------------------------- ADE20K


def _read_ade_names(path: Path, count: int) -> list[str]:
    """Class names from ``objectInfo150.txt`` (tab-separated) or ``.csv``: ``Idx ... Name`` with a header row;
    the first synonym of each name (``"wall"`` from ``"wall"``, ``"building"`` from ``"building, edifice"``)."""
    with open(path, newline="", encoding="utf-8") as handle:
        text = handle.read()
    delimiter = "\t" if "\t" in text else ","
    rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if row and any(row)]
    names: dict[int, str] = {}
    for row in rows[1:]:
        try:
            idx = int(row[0])
        except ValueError:
            raise ValueError(f"{path}: row {row!r} does not start with a class index") from None
        names[idx] = row[-1].replace(";", ",").split(",")[0].strip()
    if sorted(names) != list(range(1, count + 1)):
        raise ValueError(f"{path}: expected class indices 1..{count}, found {len(names)} rows")
    return [names[i] for i in range(1, count + 1)]


class ADE20K(DenseDataset):
    """ADE20K SceneParsing (ADEChallengeData2016): 150 classes, annotation ``a`` -> class ``a - 1``, 0 ignored."""

    targets = ("segmentation",)
    NUM_CLASSES = 150
    FOLDERS: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}

    def __init__(self, root: str | os.PathLike, split: str, transform: Transform | None = None) -> None:
        super().__init__("segmentation", transform)
        self.root = Path(root)
        self.split = split
        folder = self.FOLDERS[_split_kind(split)]
        image_dir, annotation_dir = self.root / "images" / folder, self.root / "annotations" / folder
        for path in (image_dir, annotation_dir):
            if not path.is_dir():
                raise ValueError(
                    f"{path}: folder not found; expected ADEChallengeData2016 with images/{folder}/*.jpg and "
                    f"annotations/{folder}/*.png"
                )
        self.images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if not self.images:
            raise ValueError(f"{image_dir}: no *.jpg images")
        self.annotations = [annotation_dir / f"{p.stem}.png" for p in self.images]
        missing = [p.name for p in self.annotations if not p.is_file()]
        if missing:
            raise ValueError(
                f"{annotation_dir}: no annotation for {len(missing)} of {len(self.images)} images "
                f"(first missing: {missing[0]})"
            )
        self.num_classes, self.class_names = self.class_info(self.root, "segmentation")

    @classmethod
    def class_info(cls, root: str | os.PathLike, target: str) -> tuple[int | None, list[str] | None]:
        for name in ("objectInfo150.csv", "objectInfo150.txt"):
            path = Path(root) / name
            if path.is_file():
                return cls.NUM_CLASSES, _read_ade_names(path, cls.NUM_CLASSES)
        return cls.NUM_CLASSES, [f"class_{i:03d}" for i in range(1, cls.NUM_CLASSES + 1)]

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, index: int) -> dict[str, Any]:
        from PIL import Image

        image = load_image(self.images[index])
        path = self.annotations[index]
        with Image.open(path) as pil:
            annotation = np.asarray(pil)
        if annotation.ndim != 2 or annotation.shape != tuple(image.shape[1:]):
            raise ValueError(
                f"{path}: annotation of shape {annotation.shape}; expected a single-channel "
                f"{tuple(image.shape[1:])} map like its image"
            )
        if int(annotation.max()) > self.NUM_CLASSES:
            raise ValueError(f"{path}: class id {int(annotation.max())} above {self.NUM_CLASSES}")
        segmentation = torch.from_numpy(annotation.astype(np.int64)) - 1
        segmentation[segmentation < 0] = IGNORE_INDEX  # 0 = "other": not one of the 150 classes
        return {"image": image, "segmentation": segmentation, "name": self.images[index].name}


# --------------------------------------------------------------------------------------------- class folders


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise ValueError(
            f"{split_dir}: folder not found; expected the ImageNet layout <root>/<split>/<class>/<image>"
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{split_dir}: no class folders; expected <root>/<split>/<class>/<image>")
    return classes


class ClassFolders(DenseDataset):
    """ImageNet-style ``root/{train,val}/<class>/<image>``; labels index the train split's sorted class folders."""

    targets = ("classification",)
    FOLDERS: ClassVar[dict[str, str]] = {"train": "train", "val": "val"}

    def __init__(self, root: str | os.PathLike, split: str, transform: Transform | None = None) -> None:
        super().__init__("classification", transform)
        self.root = Path(root)
        self.split = split
        self.num_classes, self.class_names = self.class_info(self.root, "classification")
        assert self.class_names is not None
        split_dir = self.root / self.FOLDERS[_split_kind(split)]
        label_of = {name: label for label, name in enumerate(self.class_names)}
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for name in _class_folders(split_dir):
            if name not in label_of:
                raise ValueError(f"{split_dir / name}: class {name!r} has no folder in {self.root / 'train'}")
            files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                empty.append(name)
            self.samples += [(path, label_of[name]) for path in files]
        if empty:
            log.warning("%s: %d class folder(s) without images, e.g. %s", split_dir, len(empty), empty[0])
        if not self.samples:
            raise ValueError(f"{split_dir}: no images ({'/'.join(IMAGE_SUFFIXES)}) in the class folders")

    @classmethod
    def class_info(cls, root: str | os.PathLike, target: str) -> tuple[int | None, list[str] | None]:
        classes = _class_folders(Path(root) / cls.FOLDERS["train"])
        return len(classes), classes

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        return {
            "image": load_image(path),
            "label": torch.tensor(label, dtype=torch.int64),
            "name": f"{path.parent.name}/{path.name}",
        }
