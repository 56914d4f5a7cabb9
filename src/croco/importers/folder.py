"""``source=folder``: pairs of plain image files, with their geometry only where a sidecar file gives it.

Input (``input=``), either

- a **folder**, searched recursively: every ``<stem>_1.<ext>`` pairs with ``<stem>_2.<ext'>`` in the same folder
  (any of ``croco.importers.images.IMAGE_EXTENSIONS``, any case; ``<stem>_1`` is view 1, the masked one). An image
  without its partner is skipped and counted as ``missing partner``. The scene id is the pair's folder relative
  to the input (``.`` gives the pair's stem: each top-level pair is its own scene);
- or a **text file** listing pairs, one per line: two paths (relative to the list's folder, or absolute)
  separated by whitespace, or by a comma when paths hold spaces, and optionally a scene id as a third field;
  ``#`` starts a comment line. A line that is not two or three fields is skipped as ``unreadable line``, a listed
  file that does not exist as ``missing partner``. The default scene id is the first image's folder relative to
  the list's folder.

Images are turned upright by their EXIF orientation, then resized (shorter side to ``resolution``) and
centre-cropped (``croco.importers.images``). Intrinsics, poses and co-visibility are unknown (NaN in the shard)
unless a **sidecar** JSON file gives them: ``<stem>.json`` next to ``<stem>_1.<ext>`` (list files:
``<first image without its extension>.json``), all keys optional::

    {"K1": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],   # pixels of the upright image file, before the resize
     "K2": [[...]],
     "pose1": [[...4x4...]], "pose2": [[...]],      # camera-to-world, OpenCV axes (x right, y down, z forward)
     "covis12": 0.6, "covis21": 0.5,                # fractions in [0, 1]
     "scene": "kitchen_03"}                          # overrides the scene id

The importer moves ``K1``/``K2`` through the resize and crop; a sidecar that is not valid JSON or has a value
of the wrong shape is skipped as ``invalid sidecar``, naming the file and the key.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from croco.data.shards import PairRecord
from croco.importers.base import Importer, SkipPair, Skipped, WorkItem
from croco.importers.images import IMAGE_EXTENSIONS, fit_square, is_image_file, read_image

MISSING_PARTNER = "missing partner"
INVALID_SIDECAR = "invalid sidecar"
SIDECAR_KEYS = ("K1", "K2", "pose1", "pose2", "covis12", "covis21", "scene")
_VIEW_NAME = re.compile(r"^(?P<stem>.+)_(?P<view>[12])$")


@dataclass(frozen=True)
class FilePairItem(WorkItem):
    path1: str
    path2: str
    sidecar: str  # may not exist


def _sidecar_of(first_image: Path) -> Path:
    stem = first_image.stem
    match = _VIEW_NAME.match(stem)
    return first_image.with_name(f"{match['stem'] if match and match['view'] == '1' else stem}.json")


class FolderImporter(Importer):
    name = "folder"

    def check_input(self) -> None:
        path = self.settings.input
        if not path.exists():
            raise FileNotFoundError(
                f"input={path}: does not exist (expected a folder of pairs or a list file)"
            )
        if path.is_file() and is_image_file(path):
            raise ValueError(
                f"input={path}: an image; expected a folder of *_1/*_2 images or a list of pairs"
            )

    def scan(self):
        if self.settings.input.is_dir():
            yield from self._scan_folder(self.settings.input)
        else:
            yield from self._scan_list(self.settings.input)

    def _scan_folder(self, root: Path):
        views: dict[tuple[Path, str], dict[str, Path]] = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p)):
            match = _VIEW_NAME.match(path.stem)
            if match:
                views.setdefault((path.parent, match["stem"]), {}).setdefault(match["view"], path)
        for (folder, stem), found in sorted(views.items()):
            if set(found) != {"1", "2"}:
                path, other = next(iter(found.values())), "2" if "1" in found else "1"
                yield Skipped(
                    MISSING_PARTNER, f"{path}: no {stem}_{other} image ({', '.join(IMAGE_EXTENSIONS)})"
                )
                continue
            relative = folder.relative_to(root).as_posix()
            yield FilePairItem(
                name=str(found["1"]),
                scene=stem if relative == "." else relative,
                path1=str(found["1"]),
                path2=str(found["2"]),
                sidecar=str(_sidecar_of(found["1"])),
            )

    def _scan_list(self, listing: Path):
        base = listing.parent
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"input={listing}: cannot read the list of pairs ({error})") from None
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = [f.strip() for f in text.split(",")] if "," in text else text.split()
            if len(fields) not in (2, 3) or not all(fields):
                yield Skipped(
                    "unreadable line", f"{listing}:{number}: expected 'image1 image2 [scene]', got {text!r}"
                )
                continue
            paths = [Path(f) if Path(f).is_absolute() else base / f for f in fields[:2]]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                yield Skipped(MISSING_PARTNER, f"{listing}:{number}: {missing[0]} does not exist")
                continue
            scene = fields[2] if len(fields) == 3 else Path(os.path.relpath(paths[0].parent, base)).as_posix()
            yield FilePairItem(
                name=f"{paths[0]} & {paths[1]}",
                scene=scene,
                path1=str(paths[0]),
                path2=str(paths[1]),
                sidecar=str(paths[0].with_suffix(".json")),
            )

    def load(self, item: FilePairItem) -> PairRecord:
        sidecar = self._sidecar(Path(item.sidecar))
        size = self.settings.resolution
        image1, K1 = fit_square(read_image(item.path1, exif_transpose=True), sidecar.get("K1"), size)
        image2, K2 = fit_square(read_image(item.path2, exif_transpose=True), sidecar.get("K2"), size)
        return PairRecord(
            image1=image1,
            image2=image2,
            K1=K1,
            K2=K2,
            pose1=sidecar.get("pose1"),
            pose2=sidecar.get("pose2"),
            covis12=sidecar.get("covis12"),
            covis21=sidecar.get("covis21"),
            scene=sidecar.get("scene", item.scene),
        )

    @staticmethod
    def _sidecar(path: Path) -> dict[str, Any]:
        """The validated sidecar values (empty if there is no sidecar); ``SkipPair`` naming the file and key."""
        if not path.is_file():
            return {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SkipPair(INVALID_SIDECAR, f"{path}: not a JSON file ({error})") from None
        if not isinstance(raw, dict):
            raise SkipPair(INVALID_SIDECAR, f"{path}: expected a JSON object with keys {list(SIDECAR_KEYS)}")
        unknown = sorted(set(raw) - set(SIDECAR_KEYS))
        if unknown:
            raise SkipPair(
                INVALID_SIDECAR, f"{path}: unknown key(s) {unknown}; expected {list(SIDECAR_KEYS)}"
            )
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if value is None:
                continue
            if key == "scene":
                if not isinstance(value, str) or not value:
                    raise SkipPair(INVALID_SIDECAR, f"{path}: scene must be a non-empty string")
                values[key] = value
                continue
            try:
                array = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                array = np.full(1, np.nan)
            shape = {"K": (3, 3), "p": (4, 4), "c": ()}[key[0]]
            expected = {(3, 3): "a 3x3 matrix", (4, 4): "a 4x4 matrix", (): "a number"}[shape]
            if array.shape != shape or not np.all(np.isfinite(array)):
                raise SkipPair(INVALID_SIDECAR, f"{path}: {key} must be {expected} of finite numbers")
            if shape == () and not 0.0 <= float(array) <= 1.0:
                raise SkipPair(
                    INVALID_SIDECAR, f"{path}: {key} must be a fraction in [0, 1], got {float(array)}"
                )
            if shape == (3, 3) and not (
                array[0, 0] > 0 and array[1, 1] > 0 and np.allclose(array[2], (0, 0, 1))
            ):
                raise SkipPair(INVALID_SIDECAR, f"{path}: {key} must have fx, fy > 0 and last row 0 0 1")
            if shape == (4, 4) and not np.allclose(array[3], (0, 0, 0, 1)):
                raise SkipPair(INVALID_SIDECAR, f"{path}: {key} must have last row 0 0 0 1")
            values[key] = float(array) if shape == () else array
        return values


IMPORTER = FolderImporter
