"""``source=crops``: the CroCo v2 real-image crop pairs (ARKitScenes, MegaDepth, 3DStreetView, IndoorVL), cut
from the original datasets on disk as the released crop lists say.

The release (naver/croco, ``datasets/crops/README.MD``) ships no images, only one crop list per dataset,
``crop_metadata/<Dataset>/crops_release.txt``, to apply to the original images under
``original_datasets/<Dataset>/``. A list has ``#`` header lines, then for each image pair a line
``img1, img2, rotation`` (paths relative to the dataset's folder, a rotation in degrees) followed by one or more
lines ``l1, r1, t1, b1, l2, r2, t2, b2``: a rectangle (left, right, top, bottom, in pixels) in each image, one
crop pair each.

The official extraction rules (``datasets/crops/extract_crops_from_images.py``), applied here per crop pair:

- each rectangle is cut out and resized to ``resolution`` x ``resolution`` (256 in the release): Lanczos when
  the rectangle has more than 4 times the output's area, bicubic otherwise;
- image 2 is then turned by the pair's rotation rounded to a multiple of 90 degrees, unless ``|rotation| <= 60``
  (then not at all), counter-clockwise for a positive angle (PIL's ``Image.rotate`` convention).

Input (``input=``): the official ``data/`` folder (holding ``crop_metadata/`` and ``original_datasets/``; every
dataset found, or those of ``datasets``), or one ``crops_release.txt`` (its dataset is its folder's name, its
images are in ``../../original_datasets/<Dataset>`` unless ``images=`` says where). The scene id is the dataset
name and the first ``scene_depth[<Dataset>]`` folders of image 1's path (e.g. ``MegaDepth/0015``), which the
train / val split uses; cameras, poses and co-visibility are unknown (crops of photographs).
Skipped and counted: a line that does not parse (``unreadable line``), an image that cannot be read
(``unreadable image``), a rectangle outside its image (``invalid crop``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from croco.data.shards import PairRecord
from croco.importers.base import Importer, ImportSettings, SkipPair, Skipped, WorkItem
from croco.importers.images import read_image

CROP_LIST = "crops_release.txt"
METADATA_FOLDER = "crop_metadata"
IMAGES_FOLDER = "original_datasets"
UNREADABLE_LINE = "unreadable line"
INVALID_CROP = "invalid crop"
DEFAULT_SCENE_DEPTH = 1


@dataclass(frozen=True)
class CropItem(WorkItem):
    """One crop pair: two images, a box in each (PIL order: left, top, right, bottom) and image 2's turn."""

    where: str  # list file and line, for messages
    path1: str
    path2: str
    box1: tuple[int, int, int, int]
    box2: tuple[int, int, int, int]
    rotation: int  # degrees counter-clockwise, a multiple of 90


def quarter_turn(rotation: float) -> int:
    """The official rule: ``|rotation| <= 60`` is no turn, anything else the nearest multiple of 90 (mod 360)."""
    if abs(rotation) <= 60:
        return 0
    return int(round(rotation / 90.0) * 90) % 360


def crop_and_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """``image[top:bottom, left:right]`` resized to ``size`` x ``size``: Lanczos when the crop has more than 4x
    the output's area, bicubic otherwise (the official rule)."""
    from PIL import Image

    left, top, right, bottom = box
    crop = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]))
    area = (right - left) * (bottom - top)
    resample = Image.Resampling.LANCZOS if area > 4 * size * size else Image.Resampling.BICUBIC
    return np.asarray(crop.resize((size, size), resample))


def turn(image: np.ndarray, degrees: int) -> np.ndarray:
    """``image`` turned counter-clockwise by a multiple of 90 degrees (exact; PIL's ``rotate`` direction)."""
    return np.ascontiguousarray(np.rot90(image, k=(degrees // 90) % 4))


def parse_crop_list(path: Path, images: Path, dataset: str, scene_depth: int) -> Iterator[CropItem | Skipped]:
    """The crop pairs of one ``crops_release.txt`` (lines that do not parse are ``Skipped``)."""
    pair: tuple[str, str, int] | None = None
    crop_index = 0
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{path}:{number}"
            fields = [f.strip() for f in text.split(",")]
            if len(fields) == 3:
                try:
                    rotation = quarter_turn(float(fields[2]))
                except ValueError:
                    yield Skipped(UNREADABLE_LINE, f"{where}: rotation {fields[2]!r} is not a number")
                    pair = None
                    continue
                pair = (fields[0], fields[1], rotation)
                crop_index = 0
                continue
            if len(fields) != 8 or pair is None:
                what = (
                    "a crop line before any image-pair line"
                    if len(fields) == 8
                    else (
                        f"{len(fields)} fields; expected 'img1, img2, rotation' or 'l1, r1, t1, b1, l2, r2, t2, b2'"
                    )
                )
                yield Skipped(UNREADABLE_LINE, f"{where}: {what}")
                continue
            try:
                l1, r1, t1, b1, l2, r2, t2, b2 = (round(float(f)) for f in fields)
            except ValueError:
                yield Skipped(UNREADABLE_LINE, f"{where}: crop coordinates are not numbers")
                continue
            first, second, rotation = pair
            path1, path2 = _resolve(images, first), _resolve(images, second)
            scene = "/".join([dataset, *Path(first).parts[: max(0, scene_depth)]]) if scene_depth else dataset
            yield CropItem(
                name=f"{path1} {path2} crop {crop_index}",
                scene=scene,
                where=where,
                path1=str(path1),
                path2=str(path2),
                box1=(l1, t1, r1, b1),
                box2=(l2, t2, r2, b2),
                rotation=rotation,
            )
            crop_index += 1


def _resolve(root: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else root / path


class CropsImporter(Importer):
    name = "crops"

    def __init__(
        self,
        settings: ImportSettings,
        *,
        images: str | os.PathLike | None = None,
        datasets: Sequence[str] | None = None,
        scene_depth: Mapping[str, int] | None = None,
    ) -> None:
        datasets = [str(d) for d in (datasets or [])]
        depth = {str(k): int(v) for k, v in dict(scene_depth or {}).items()}
        super().__init__(
            settings, images=str(images) if images else None, datasets=datasets, scene_depth=depth
        )
        self.images = Path(images) if images else None
        self.datasets = datasets
        self.scene_depth = depth
        self._cache: dict[int, tuple[str, np.ndarray]] = {}  # per view, the last image read (crops of a pair
        # follow one another, so each image is decoded once)

    def crop_lists(self) -> list[tuple[str, Path, Path]]:
        """(dataset, crop list, images folder) of every dataset to import."""
        source = self.settings.input
        if source.is_file():
            dataset = source.parent.name
            images = self.images or source.parent.parent.parent / IMAGES_FOLDER / dataset
            return [(dataset, source, images)]
        found = sorted(source.glob(f"{METADATA_FOLDER}/*/{CROP_LIST}"))
        lists = [
            (p.parent.name, p, (self.images or source / IMAGES_FOLDER) / p.parent.name)
            for p in found
            if not self.datasets or p.parent.name in self.datasets
        ]
        missing = sorted(set(self.datasets) - {name for name, _, _ in lists})
        if missing:
            raise FileNotFoundError(
                f"input={source}: no {METADATA_FOLDER}/<Dataset>/{CROP_LIST} for datasets {missing} "
                f"(found {[p.parent.name for p in found]})"
            )
        return lists

    def check_input(self) -> None:
        source = self.settings.input
        if not source.exists():
            raise FileNotFoundError(
                f"input={source}: does not exist (expected {CROP_LIST} or a folder with {METADATA_FOLDER}/)"
            )
        if source.is_dir() and not self.crop_lists():
            raise FileNotFoundError(f"input={source}: no {METADATA_FOLDER}/<Dataset>/{CROP_LIST} in it")
        for dataset, _, images in self.crop_lists():
            if not images.is_dir():
                raise FileNotFoundError(
                    f"{dataset}: original images folder {images} does not exist (set images= to the folder "
                    f"holding <Dataset>/ folders, or put them under {IMAGES_FOLDER}/)"
                )

    def scan(self) -> Iterator[CropItem | Skipped]:
        for dataset, crop_list, images in self.crop_lists():
            depth = self.scene_depth.get(dataset, DEFAULT_SCENE_DEPTH)
            yield from parse_crop_list(crop_list, images, dataset, depth)

    def _image(self, path: str, slot: int) -> np.ndarray:
        cached = self._cache.get(slot)
        if cached is None or cached[0] != path:
            cached = self._cache[slot] = (path, read_image(path))
        return cached[1]

    def load(self, item: CropItem) -> PairRecord:
        size = self.settings.resolution
        views = []
        for slot, (path, box) in enumerate(((item.path1, item.box1), (item.path2, item.box2)), start=1):
            image = self._image(path, slot)
            height, width = image.shape[:2]
            left, top, right, bottom = box
            if not (0 <= left < right <= width and 0 <= top < bottom <= height):
                raise SkipPair(
                    INVALID_CROP,
                    f"{item.where}: crop (l {left}, r {right}, t {top}, b {bottom}) is outside {path} "
                    f"({width}x{height})",
                )
            views.append(crop_and_resize(image, box, size))
        return PairRecord(
            image1=views[0],
            image2=turn(views[1], item.rotation),
            K1=None,
            K2=None,
            pose1=None,
            pose2=None,
            covis12=None,
            covis21=None,
            scene=item.scene,
        )


IMPORTER = CropsImporter

__all__ = [
    "IMPORTER",
    "CropItem",
    "CropsImporter",
    "crop_and_resize",
    "parse_crop_list",
    "quarter_turn",
    "turn",
]
