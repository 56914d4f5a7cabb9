"""Datasets of the binocular downstream tasks of CroCo v2: stereo (disparity), optical flow and relative pose.

Every dataset returns, without a transform, a *raw* sample: ``"img1"`` and ``"img2"`` uint8 (3, H, W) RGB, the
ground truth at the images' size and ``"name"`` (a string naming the pair). The ground truth is one of

- stereo: ``"disparity"`` float32 (1, H, W), positive pixels of the left view (``img1``), **+inf where there
  is no valid ground truth** (the official CroCo-Stereo convention: the losses mask with ``isfinite``);
- flow: ``"flow"`` float32 (2, H, W), (u, v) = (x, y) displacement from ``img1`` to ``img2``, +inf in both
  channels where invalid (sparse KITTI ground truth stays sparse);
- pose: ``"rotation"`` float32 (3, 3), ``"translation"`` float32 (3,) unit vector and ``"translation_norm"``
  float32 scalar (metres): camera 2 in camera 1's frame, T = inv(pose1) @ pose2 (camera-to-world poses, OpenCV
  axes), R = T[:3, :3], t = T[:3, 3] / |T[:3, 3]|. Pairs with |T[:3, 3]| < ``MIN_TRANSLATION`` have no
  direction: they are dropped and counted (``dataset.dropped``).

``croco.data.stereoflow_transforms`` turns raw samples into training samples (fixed size, ImageNet-normalised
float images); each dataset takes such a ``transform`` (None: raw samples) and lists the ``targets`` it
supports. Splits are ``"train"``, ``"val"`` and ``"test"``; benchmarks keep their test ground truth private,
so ``"test"`` reads the held-out part of the training data (the ``"val"`` pairs) unless stated otherwise.

Sources and their on-disk layouts (the pair lists and held-out splits follow the official CroCo-Stereo/Flow
code, naver/croco ``stereoflow/datasets_stereo.py`` and ``stereoflow/datasets_flow.py``):

- ``SyntheticStereo`` / ``SyntheticFlow`` / ``SyntheticPose``: the project's own shards
  (``croco.data.shards``) written by the embedded generator: ``task=stereo`` shards hold ``disparity``
  (f·B/depth of the left view) and ``disparity_valid``; ``task=flow`` shards ``flow`` (H, W, 2) and
  ``flow_valid``; every shard (pretraining or task) has ``pose1``/``pose2``, so pose works on any of them.
  Train / val split by scene (``croco.data.index.is_val_scene``).
- ``Middlebury``: one folder per scene with ``im0.png`` (left), ``im1.png`` (right), ``disp0.pfm`` (left
  disparity, inf = unknown) and ``calib.txt`` (2014 / 2021 / MiddEval3 layout); held out: the official
  sub-validation scenes ``Umbrella-imperfect`` and ``Vintage-perfect`` of Middlebury 2014, or the last two
  scenes in sorted order when neither is present (the official rule for Middlebury 2021).
- ``KittiStereo``: KITTI 2015 ``training/image_2/*_10.png``, ``training/image_3/*_10.png``,
  ``training/disp_occ_0/*_10.png``; KITTI 2012 ``training/colored_0``, ``colored_1``, ``disp_occ`` (16-bit
  PNGs, disparity = value / 256, 0 = unknown). Held out: the last ``val_frames`` frames (5, as the official
  code).
- ``KittiFlow``: ``training/image_2/*_10.png`` -> ``*_11.png`` with ``training/flow_occ/*_10.png`` (2012:
  ``colored_0``); held out: the last ``val_frames`` (10, as the official code).
- ``SceneFlowStereo``: FlyingThings3D
  ``frames_{clean,final}pass/{TRAIN,TEST}/{A,B,C}/XXXX/{left,right}/NNNN.png`` and
  ``disparity/{TRAIN,TEST}/.../left/NNNN.pfm``; ``TRAIN`` trains, ``"val"`` is every 100th ``TEST`` frame
  (the official ``test1of100``), ``"test"`` all of ``TEST``.
- ``SintelFlow``: MPI-Sintel ``training/{clean,final}/<scene>/frame_XXXX.png`` and
  ``training/flow/<scene>/frame_XXXX.flo`` (consecutive frames); held out: scenes ``temple_2`` and
  ``temple_3`` (the official ``subval``).
- ``FlyingChairs``: ``data/XXXXX_img1.ppm``, ``_img2.ppm``, ``_flow.flo`` and the split file
  ``FlyingChairs_train_val.txt`` (one line per pair, 1 = train, 2 = val; ``chairs_split.txt`` works too).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import torch

from croco.data.dense import load_image
from croco.data.index import is_val_scene
from croco.data.shards import ShardError, ShardReader, list_shards
from croco.data.splits import TargetDataset, Transform
from croco.data.stereoflow_io import (
    UNKNOWN_FLOW_THRESHOLD,
    read_flo,
    read_kitti_disparity,
    read_kitti_flow,
    read_pfm,
)

log = logging.getLogger(__name__)

__all__ = [
    "MIN_TRANSLATION",
    "SPLITS",
    "TARGETS",
    "TARGET_KEYS",
    "BinocularDataset",
    "FlyingChairs",
    "KittiFlow",
    "KittiStereo",
    "Middlebury",
    "SceneFlowStereo",
    "SintelFlow",
    "SyntheticFlow",
    "SyntheticPose",
    "SyntheticStereo",
    "disparity_tensor",
    "flow_tensor",
    "relative_pose",
]

TARGETS: tuple[str, ...] = ("stereo", "flow", "pose")
TARGET_KEYS: dict[str, tuple[str, ...]] = {
    "stereo": ("disparity",),
    "flow": ("flow",),
    "pose": ("rotation", "translation", "translation_norm"),
}
SPLITS: tuple[str, ...] = ("train", "val", "test")
MIN_TRANSLATION: float = 1e-6
"""Pairs whose cameras are closer than this (metres) have no translation direction and are dropped."""



def _generate_hint(task: str) -> str:
    return f"generate them with `python generate.py source=synthetic task={task} out=<folder>`"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {list(SPLITS)}")
    return split


# --------------------------------------------------------------------------------------------- ground truth


def disparity_tensor(disparity: np.ndarray, valid: np.ndarray | None = None) -> torch.Tensor:
    """(H, W) disparity -> float32 (1, H, W) with +inf where invalid (``~valid``, non-finite or <= 0)."""
    values = np.asarray(disparity, dtype=np.float32)
    keep = np.isfinite(values) & (values > 0)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    return torch.from_numpy(np.where(keep, values, np.inf).astype(np.float32)).unsqueeze(0)


def flow_tensor(flow: np.ndarray, valid: np.ndarray | None = None) -> torch.Tensor:
    """(H, W, 2) flow -> float32 (2, H, W) with +inf in both channels where invalid (``~valid``, non-finite,
    or Middlebury's "unknown" magnitude above 1e9)."""
    values = np.asarray(flow, dtype=np.float32)
    keep = (np.isfinite(values) & (np.abs(values) < UNKNOWN_FLOW_THRESHOLD)).all(axis=2)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    out = np.where(keep[..., None], values, np.inf).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def relative_pose(pose1: np.ndarray, pose2: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Camera 2 in camera 1's frame from camera-to-world poses: (R (3, 3), t (3,) unnormalised, |t|)."""
    relative = np.linalg.inv(np.asarray(pose1, dtype=np.float64)) @ np.asarray(pose2, dtype=np.float64)
    translation = relative[:3, 3]
    return relative[:3, :3], translation, float(np.linalg.norm(translation))


def pose_sample(pose1: np.ndarray, pose2: np.ndarray) -> dict[str, torch.Tensor]:
    """The pose ground truth of a sample (rotation, unit translation, its norm), float32."""
    rotation, translation, norm = relative_pose(pose1, pose2)
    return {
        "rotation": torch.from_numpy(rotation.astype(np.float32)),
        "translation": torch.from_numpy((translation / max(norm, 1e-12)).astype(np.float32)),
        "translation_norm": torch.tensor(norm, dtype=torch.float32),
    }


# --------------------------------------------------------------------------------------------- base class


class BinocularDataset(TargetDataset):
    """A two-view dataset (``TargetDataset``): raw samples hold ``img1``, ``img2`` and the target's ground truth."""


# --------------------------------------------------------------------------------------------- synthetic


def _open_shards(folder: Path, needed: Sequence[str], task: str) -> list[ShardReader]:
    """Every shard of ``folder``, each checked for the ``needed`` fields; one-line errors otherwise."""
    try:
        paths = list_shards(folder)
    except ShardError as error:
        raise ValueError(
            f"{error}; expected shards of the embedded generator: {_generate_hint(task)}"
        ) from None
    readers = [ShardReader(path) for path in paths]
    for reader in readers:
        missing = [name for name in needed if name not in reader.fields]
        if missing:
            raise ValueError(
                f"{reader.path}: no field(s) {missing}; they come from the generator's task={task} shards: "
                f"{_generate_hint(task)}"
            )
    return readers


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


class _SyntheticPairs(BinocularDataset):
    """Pairs of the embedded generator's shards, split by scene; subclasses name the fields they need."""

    task = "pretrain"
    needed: tuple[str, ...] = ()

    def __init__(
        self,
        folder: str | os.PathLike,
        split: str,
        val_fraction: float = 0.1,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(self.targets[0], transform)
        self.folder = Path(folder)
        self.split = _check_split(split)
        want_val = split != "train"
        self.readers = _open_shards(self.folder, self.needed, self.task)
        rows: list[tuple[int, int]] = []
        split_of: dict[str, bool] = {}
        for shard, reader in enumerate(self.readers):
            for row, scene in enumerate(reader.scene):
                if split_of.setdefault(scene, is_val_scene(scene, val_fraction)) == want_val:
                    rows.append((shard, row))
        self.scenes = sorted(scene for scene, is_val in split_of.items() if is_val == want_val)
        self.index = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, index: int, fields: Sequence[str]) -> tuple[dict[str, Any], str]:
        shard, row = (int(v) for v in self.index[index])
        reader = self.readers[shard]
        data = reader.read(row, fields=("image1", "image2", *fields))
        return data, f"{reader.scene[row]}/{reader.path.stem}-{row:05d}"

    def _images(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        return {"img1": _image_tensor(data["image1"]), "img2": _image_tensor(data["image2"]), "name": name}


class SyntheticStereo(_SyntheticPairs):
    """Rectified pairs of the generator's ``task=stereo`` shards: left = ``image1``, right = ``image2``."""

    targets = ("stereo",)
    task = "stereo"
    needed = ("disparity", "disparity_valid")

    def raw(self, index: int) -> dict[str, Any]:
        data, name = self._read(index, self.needed)
        sample = self._images(data, name)
        sample["disparity"] = disparity_tensor(data["disparity"], data["disparity_valid"])
        return sample


class SyntheticFlow(_SyntheticPairs):
    """Pairs of the generator's ``task=flow`` shards; pixels unseen in view 2 (not ``flow_valid``): +inf."""

    targets = ("flow",)
    task = "flow"
    needed = ("flow", "flow_valid")

    def raw(self, index: int) -> dict[str, Any]:
        data, name = self._read(index, self.needed)
        sample = self._images(data, name)
        sample["flow"] = flow_tensor(data["flow"], data["flow_valid"])
        return sample


class SyntheticPose(_SyntheticPairs):
    """Relative pose of the pairs of *any* shard (pretraining or task); pairs without translation dropped."""

    targets = ("pose",)
    task = "pretrain"
    needed = ("pose1", "pose2")

    def __init__(
        self,
        folder: str | os.PathLike,
        split: str,
        val_fraction: float = 0.1,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(folder, split, val_fraction, transform)
        keep = np.ones(len(self.index), dtype=bool)
        for shard, reader in enumerate(self.readers):
            mine = np.flatnonzero(self.index[:, 0] == shard)
            if not len(mine):
                continue
            pose1, pose2 = _pose_columns(reader)
            for position in mine:
                row = int(self.index[position, 1])
                keep[position] = relative_pose(pose1[row], pose2[row])[2] >= MIN_TRANSLATION
        self.dropped = int((~keep).sum())
        if self.dropped:
            log.info(
                "%s (%s): %d of %d pairs have no camera translation (< %g m) and are left out of pose",
                self.folder, self.split, self.dropped, len(keep), MIN_TRANSLATION,
            )  # fmt: skip
        self.index = self.index[keep]

    def raw(self, index: int) -> dict[str, Any]:
        data, name = self._read(index, self.needed)
        sample = self._images(data, name)
        sample.update(pose_sample(data["pose1"], data["pose2"]))
        return sample


def _pose_columns(reader: ShardReader) -> tuple[np.ndarray, np.ndarray]:
    """Both (N, 4, 4) pose columns of a shard in two reads (instead of two reads per pair)."""
    try:
        with h5py.File(reader.path, "r", locking=False) as handle:
            return handle["pose1"][()], handle["pose2"][()]
    except (OSError, KeyError) as error:
        raise ValueError(f"{reader.path}: cannot read pose1/pose2: {str(error).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------------- files on disk


@dataclass(frozen=True)
class PairFiles:
    """The files of one pair: two images and the ground truth (a disparity or flow file)."""

    image1: Path
    image2: Path
    ground_truth: Path
    name: str


def _require_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"{path}: folder not found; expected {layout}")
    return path


def _require_files(pairs: Sequence[PairFiles], where: Path, layout: str) -> None:
    """Every listed file exists; otherwise one line with the count and the first missing file."""
    missing = [
        path for pair in pairs for path in (pair.image1, pair.image2, pair.ground_truth) if not path.is_file()
    ]
    if missing:
        raise ValueError(
            f"{missing[0]}: file not found ({len(missing)} missing under {where}); expected {layout}"
        )


def _frame_stems(folder: Path, suffix: str, layout: str) -> list[str]:
    stems = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}") if p.is_file())
    if not stems:
        raise ValueError(f"{folder}: no *{suffix} files; expected {layout}")
    return stems


class _PairFilesDataset(BinocularDataset):
    """A list of ``PairFiles`` read from disk; subclasses build the list and read their ground truth."""

    def __init__(self, target: str, root: str | os.PathLike, split: str, transform: Transform | None) -> None:
        super().__init__(target, transform)
        self.root = Path(root)
        self.split = _check_split(split)
        self.pairs: list[PairFiles] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def ground_truth(self, path: Path) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def raw(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        sample: dict[str, Any] = {"img1": load_image(pair.image1), "img2": load_image(pair.image2)}
        sample.update(self.ground_truth(pair.ground_truth))
        size = tuple(sample["img1"].shape[1:])
        for key, path in (("img2", pair.image2), (TARGET_KEYS[self.target][0], pair.ground_truth)):
            if tuple(sample[key].shape[1:]) != size:
                raise ValueError(
                    f"{path}: size {tuple(sample[key].shape[1:])} differs from its left image's {size} "
                    f"({pair.image1})"
                )
        sample["name"] = pair.name
        return sample


def _pfm_disparity(path: Path) -> dict[str, torch.Tensor]:
    disparity, _ = read_pfm(path)
    if disparity.ndim != 2:
        raise ValueError(
            f"{path}: colour PFM of shape {disparity.shape}; expected a single-channel disparity map"
        )
    return {"disparity": disparity_tensor(disparity)}


def _kitti_disparity(path: Path) -> dict[str, torch.Tensor]:
    disparity, valid = read_kitti_disparity(path)
    return {"disparity": disparity_tensor(disparity, valid)}


def _kitti_flow(path: Path) -> dict[str, torch.Tensor]:
    flow, valid = read_kitti_flow(path)
    return {"flow": flow_tensor(flow, valid)}


def _flo_flow(path: Path) -> dict[str, torch.Tensor]:
    return {"flow": flow_tensor(read_flo(path))}


class Middlebury(_PairFilesDataset):
    """Middlebury stereo scenes (``<scene>/im0.png``, ``im1.png``, ``disp0.pfm``, ``calib.txt``)."""

    targets = ("stereo",)
    VAL_SCENES: ClassVar[tuple[str, ...]] = ("Umbrella-imperfect", "Vintage-perfect")
    LAYOUT = "Middlebury scene folders <root>/<scene>/{im0.png, im1.png, disp0.pfm, calib.txt}"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        val_scenes: Sequence[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__("stereo", root, split, transform)
        _require_dir(self.root, self.LAYOUT)
        scenes = sorted(p.name for p in self.root.iterdir() if (p / "im0.png").is_file())
        if not scenes:
            raise ValueError(f"{self.root}: no scene folder with an im0.png; expected {self.LAYOUT}")
        wanted = tuple(val_scenes) if val_scenes is not None else self.VAL_SCENES
        held_out = [s for s in scenes if s in wanted] or (scenes[-2:] if val_scenes is None else [])
        chosen = [s for s in scenes if (s in held_out) == (split != "train")]
        self.scenes = chosen
        self.pairs = [
            PairFiles(self.root / s / "im0.png", self.root / s / "im1.png", self.root / s / "disp0.pfm", s)
            for s in chosen
        ]
        _require_files(self.pairs, self.root, self.LAYOUT)

    def ground_truth(self, path: Path) -> dict[str, torch.Tensor]:
        return _pfm_disparity(path)


_KITTI_FOLDERS: dict[int, dict[str, str]] = {
    2012: {"left": "colored_0", "right": "colored_1", "disparity": "disp_occ", "flow": "flow_occ"},
    2015: {"left": "image_2", "right": "image_3", "disparity": "disp_occ_0", "flow": "flow_occ"},
}


def _kitti_folders(year: int) -> dict[str, str]:
    if year not in _KITTI_FOLDERS:
        raise ValueError(f"KITTI year={year!r}: expected one of {sorted(_KITTI_FOLDERS)}")
    return _KITTI_FOLDERS[year]


def _held_out_frames(stems: list[str], split: str, val_frames: int) -> list[str]:
    """The last ``val_frames`` frames are held out (val / test), the others train."""
    if val_frames < 0:
        raise ValueError(f"val_frames={val_frames}: expected >= 0")
    cut = len(stems) - min(val_frames, len(stems))
    return stems[:cut] if split == "train" else stems[cut:]


def _kitti_pairs(root: Path, year: int, split: str, val_frames: int, target: str) -> list[PairFiles]:
    """The KITTI training pairs of ``target``: stereo = left / right of frame ``_10`` with its disparity, flow =
    frames ``_10`` -> ``_11`` of the left camera with the flow of ``_10``."""
    folders = _kitti_folders(year)
    stereo = target == "stereo"
    gt = folders["disparity"] if stereo else folders["flow"]
    second = folders["right"] if stereo else folders["left"]
    layout = (f"KITTI {year} {target}: <root>/training/{{{folders['left']},{second},{gt}}}/NNNNNN_10.png"
              + ("" if stereo else f" and {folders['left']}/NNNNNN_11.png"))  # fmt: skip
    training = _require_dir(root / "training", layout)
    left = _require_dir(training / folders["left"], layout)
    stems = _held_out_frames(_frame_stems(left, "_10.png", layout), split, val_frames)
    frame = "_10" if stereo else "_11"
    pairs = [PairFiles(left / f"{stem}_10.png", training / second / f"{stem}{frame}.png",
                       training / gt / f"{stem}_10.png", f"kitti{year}/{stem}") for stem in stems]  # fmt: skip
    _require_files(pairs, training, layout)
    return pairs


class KittiStereo(_PairFilesDataset):
    """KITTI stereo 2012 / 2015 training pairs (frame ``_10``), sparse 16-bit PNG disparity (``disp_occ``)."""

    targets = ("stereo",)

    def __init__(
        self, root: str | os.PathLike, split: str, year: int = 2015, val_frames: int = 5,
        transform: Transform | None = None,
    ) -> None:  # fmt: skip
        super().__init__("stereo", root, split, transform)
        self.year = year
        self.pairs = _kitti_pairs(self.root, year, split, val_frames, "stereo")

    def ground_truth(self, path: Path) -> dict[str, torch.Tensor]:
        return _kitti_disparity(path)


class KittiFlow(_PairFilesDataset):
    """KITTI flow 2012 / 2015 training pairs (frame ``_10`` -> ``_11``), sparse 16-bit PNG flow."""

    targets = ("flow",)

    def __init__(
        self, root: str | os.PathLike, split: str, year: int = 2015, val_frames: int = 10,
        transform: Transform | None = None,
    ) -> None:  # fmt: skip
        super().__init__("flow", root, split, transform)
        self.year = year
        self.pairs = _kitti_pairs(self.root, year, split, val_frames, "flow")

    def ground_truth(self, path: Path) -> dict[str, torch.Tensor]:
        return _kitti_flow(path)


def _check_pass(pass_: str) -> tuple[str, ...]:
    passes = {"clean": ("clean",), "final": ("final",), "all": ("clean", "final")}
    if pass_ not in passes:
        raise ValueError(f"pass_={pass_!r}: expected one of {list(passes)}")
    return passes[pass_]


class SceneFlowStereo(_PairFilesDataset):
    """FlyingThings3D stereo (the SceneFlow subset CroCo-Stereo evaluates on), clean / final / all passes."""

    targets = ("stereo",)
    LAYOUT = (
        "FlyingThings3D: <root>/frames_{clean,final}pass/{TRAIN,TEST}/{A,B,C}/XXXX/{left,right}/NNNN.png and "
        "<root>/disparity/{TRAIN,TEST}/{A,B,C}/XXXX/left/NNNN.pfm"
    )
    VAL_STRIDE = 100

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        pass_: str = "clean",
        transform: Transform | None = None,
    ) -> None:
        super().__init__("stereo", root, split, transform)
        part = "TRAIN" if split == "train" else "TEST"
        for name in _check_pass(pass_):
            frames = _require_dir(self.root / f"frames_{name}pass" / part, self.LAYOUT)
            lefts = sorted(frames.glob("*/*/left/*.png"))
            if not lefts:
                raise ValueError(
                    f"{frames}: no <letter>/<sequence>/left/*.png frames; expected {self.LAYOUT}"
                )
            if split == "val":
                lefts = lefts[:: self.VAL_STRIDE]
            for left in lefts:
                relative = left.relative_to(frames)  # A/0000/left/0006.png
                self.pairs.append(
                    PairFiles(
                        left,
                        left.parent.parent / "right" / left.name,
                        (self.root / "disparity" / part / relative).with_suffix(".pfm"),
                        f"{name}pass/{part}/{relative.with_suffix('')}",
                    )
                )
        _require_files(self.pairs, self.root, self.LAYOUT)

    def ground_truth(self, path: Path) -> dict[str, torch.Tensor]:
        return _pfm_disparity(path)


class SintelFlow(_PairFilesDataset):
    """MPI-Sintel training sequences: consecutive frames and their ``.flo`` ground truth."""

    targets = ("flow",)
    VAL_SCENES: ClassVar[tuple[str, ...]] = ("temple_2", "temple_3")
    LAYOUT = (
        "MPI-Sintel: <root>/training/{clean,final}/<scene>/frame_XXXX.png and "
        "<root>/training/flow/<scene>/frame_XXXX.flo"
    )

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        pass_: str = "clean",
        val_scenes: Sequence[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__("flow", root, split, transform)
        held_out = set(val_scenes if val_scenes is not None else self.VAL_SCENES)
        training = _require_dir(self.root / "training", self.LAYOUT)
        for name in _check_pass(pass_):
            frames_dir = _require_dir(training / name, self.LAYOUT)
            scenes = sorted(p.name for p in frames_dir.iterdir() if p.is_dir())
            if not scenes:
                raise ValueError(f"{frames_dir}: no scene folders; expected {self.LAYOUT}")
            for scene in scenes:
                if (scene in held_out) == (split == "train"):
                    continue
                frames = sorted((frames_dir / scene).glob("frame_*.png"))
                for first, second in itertools.pairwise(frames):
                    self.pairs.append(
                        PairFiles(
                            first,
                            second,
                            training / "flow" / scene / f"{first.stem}.flo",
                            f"{name}/{scene}/{first.stem}",
                        )
                    )
        _require_files(self.pairs, training, self.LAYOUT)

    def ground_truth(self, path: Path) -> dict[str, torch.Tensor]:
        return _flo_flow(path)


class FlyingChairs(_PairFilesDataset):
    """FlyingChairs (``data/XXXXX_img1.ppm``, ``_img2.ppm``, ``_flow.flo``), official train / val split."""

    targets = ("flow",)
    SPLIT_FILES: ClassVar[tuple[str, ...]] = ("FlyingChairs_train_val.txt", "chairs_split.txt")
    LAYOUT = (
        "FlyingChairs: <root>/data/XXXXX_{img1.ppm,img2.ppm,flow.flo} and <root>/FlyingChairs_train_val.txt "
        "(one line per pair: 1 = train, 2 = val)"
    )

    def __init__(self, root: str | os.PathLike, split: str, transform: Transform | None = None) -> None:
        super().__init__("flow", root, split, transform)
        data = _require_dir(self.root / "data", self.LAYOUT)
        split_file = next((self.root / n for n in self.SPLIT_FILES if (self.root / n).is_file()), None)
        if split_file is None:
            raise ValueError(f"{self.root / self.SPLIT_FILES[0]}: file not found; expected {self.LAYOUT}")
        labels = self._read_split(split_file)
        wanted = 1 if split == "train" else 2
        self.pairs = [
            PairFiles(
                data / f"{i:05d}_img1.ppm", data / f"{i:05d}_img2.ppm", data / f"{i:05d}_flow.flo", f"{i:05d}"
            )
            for i, label in enumerate(labels, start=1)
            if label == wanted
        ]
        _require_files(self.pairs, data, self.LAYOUT)

    @staticmethod
    def _read_split(path: Path) -> list[int]:
        labels = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            if line.strip() not in ("1", "2"):
                raise ValueError(f"{path}: line {number} is {line.strip()!r}; expected 1 (train) or 2 (val)")
            labels.append(int(line))
        return labels

    def ground_truth(self, path: Path) -> dict[str, torch.Tensor]:
        return _flo_flow(path)
