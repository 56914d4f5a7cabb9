"""Pair metadata: the cameras of a pair set without its images, and rendering exactly those pairs again.

The official CroCo Habitat release is shared the same way (naver/croco, ``datasets/habitat_sim/``:
``metadata.json`` per scene with camera positions, orientations and co-visibility, re-rendered by
``generate_from_metadata.py``): whoever has the scene datasets renders the same pairs.

File format (JSON, one file for a whole pair set)::

    {"format": "croco-pair-metadata", "version": 1, "renderer": "habitat", "resolution": [256, 256],
     "hfov_deg": 60.0, "scene_dataset_config": "hm3d/hm3d_annotated_basis.scene_dataset_config.json" | null,
     "scenes": [{"scene": "wcojb4TFT35", "scene_file": "hm3d/train/00800-TEEsavR23oF/wcojb4TFT35.basis.glb",
                 "pairs": [{"positions": [[x, y, z], [x, y, z]],
                            "orientations": [[w, x, y, z], [w, x, y, z]],
                            "covisibility": [covis12, covis21]}, ...]}, ...]}

``positions`` are camera centres in the scene's world frame (y up, metres) and ``orientations`` the camera
rotations as Habitat stores them (unit quaternions w, x, y, z of a camera with x right, y up, z backwards), as
in the official metadata; ``scene_file`` is relative to the scene-dataset root (``source.data_root``) when the
shards were generated from a preset. ``scene`` is the split id (``croco.synth.habitat.normalise_scene_id``).

Export: ``python -m croco.synth.metadata export data/habitat --out pairs.json`` (any shard folder whose cameras
are the pinhole cameras of one hfov: habitat shards, and the procedural rooms', whose scene ids rebuild their
rooms). Rendering: ``python generate.py source=habitat metadata=pairs.json`` (``render_from_metadata``): one
shard per scene of the file (``shard-<scene index>.h5``), resumable and split over workers and cluster jobs by
scene like ``generate_pairs``; co-visibility is recomputed from the rendered depth (the summary prints its
largest difference to the listed values, each shard stores it as ``overlap_error``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from croco.data.shard_jobs import run_shard_jobs
from croco.data.shards import PairRecord, ShardError, ShardReader, ShardWriter, list_shards
from croco.geometry.cameras import intrinsics_from_hfov, make_pose
from croco.geometry.covisibility import covisibility
from croco.synth.habitat import OPENCV_TO_HABITAT, habitat_camera_state, quaternion_to_rotation
from croco.synth.pipeline import PIXEL_CONVENTION, SCENE_FILE_INDEX, SCENE_FILES
from croco.synth.render import Renderer
from croco.synth.viewpoints import NavigableScene
from croco.utils.files import atomic_output

METADATA_FORMAT = "croco-pair-metadata"
METADATA_VERSION = 1
GENERATOR_NAME = "croco.synth.metadata"


class MetadataError(ValueError):
    """A metadata file (or a shard folder to export) that cannot be used; one line naming the file and key."""


@dataclass(frozen=True)
class PairCameras:
    """The two cameras of one pair and their co-visibility."""

    positions: np.ndarray  # (2, 3) camera centres
    orientations: np.ndarray  # (2, 4) Habitat camera rotations, (w, x, y, z)
    covis12: float
    covis21: float

    @classmethod
    def from_poses(cls, pose1: np.ndarray, pose2: np.ndarray, covis12: float, covis21: float) -> PairCameras:
        states = [habitat_camera_state(pose) for pose in (pose1, pose2)]
        return cls(
            np.array([s[0] for s in states]), np.array([s[1] for s in states]), float(covis12), float(covis21)
        )

    def poses(self) -> tuple[np.ndarray, np.ndarray]:
        """The OpenCV camera-to-world poses of the two views."""
        return tuple(  # type: ignore[return-value]
            make_pose(quaternion_to_rotation(*q) @ OPENCV_TO_HABITAT, p)
            for p, q in zip(self.positions, self.orientations)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "positions": self.positions.tolist(),
            "orientations": self.orientations.tolist(),
            "covisibility": [self.covis12, self.covis21],
        }


@dataclass
class SceneMetadata:
    scene: str
    scene_file: str
    pairs: list[PairCameras] = field(default_factory=list)


@dataclass
class PairMetadata:
    """A pair set: the camera model, and per scene its file and pairs."""

    renderer: str
    resolution: tuple[int, int]
    hfov_deg: float
    scene_dataset_config: str | None
    scenes: list[SceneMetadata]

    @property
    def pair_count(self) -> int:
        return sum(len(scene.pairs) for scene in self.scenes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": METADATA_FORMAT,
            "version": METADATA_VERSION,
            "renderer": self.renderer,
            "resolution": list(self.resolution),
            "hfov_deg": self.hfov_deg,
            "scene_dataset_config": self.scene_dataset_config,
            "scenes": [
                {"scene": s.scene, "scene_file": s.scene_file, "pairs": [p.to_json() for p in s.pairs]}
                for s in self.scenes
            ],
        }

    def digest(self) -> str:
        """SHA-1 of the canonical JSON: shards rendered from this file record it, so a resume with another
        file is refused."""
        return hashlib.sha1(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def load_metadata(path: str | Path) -> PairMetadata:
    """Read and check a metadata file; every problem is a one-line ``MetadataError`` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MetadataError(f"metadata file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MetadataError(f"{path}: not a JSON metadata file ({error})") from None
    if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
        raise MetadataError(
            f"{path}: expected 'format': '{METADATA_FORMAT}' (written by croco.synth.metadata)"
        )
    if data.get("version") != METADATA_VERSION:
        raise MetadataError(f"{path}: version {data.get('version')!r}, this code reads {METADATA_VERSION}")
    try:
        resolution = tuple(int(v) for v in data["resolution"])
        hfov = float(data["hfov_deg"])
        scenes = []
        for i, entry in enumerate(data["scenes"]):
            pairs = []
            for j, pair in enumerate(entry["pairs"]):
                positions = np.asarray(pair["positions"], dtype=np.float64)
                orientations = np.asarray(pair["orientations"], dtype=np.float64)
                covis = [float(c) for c in pair["covisibility"]]
                if positions.shape != (2, 3) or orientations.shape != (2, 4) or len(covis) != 2:
                    raise MetadataError(
                        f"{path}: scenes[{i}].pairs[{j}]: expected positions 2x3, orientations 2x4 and "
                        f"covisibility of 2, got {positions.shape}, {orientations.shape}, {len(covis)}"
                    )
                if not (
                    np.all(np.isfinite(positions)) and np.all(np.linalg.norm(orientations, axis=1) > 0.5)
                ):
                    raise MetadataError(
                        f"{path}: scenes[{i}].pairs[{j}]: non-finite position or bad quaternion"
                    )
                pairs.append(PairCameras(positions, orientations, covis[0], covis[1]))
            scenes.append(SceneMetadata(str(entry["scene"]), str(entry["scene_file"]), pairs))
        metadata = PairMetadata(
            str(data["renderer"]),
            (resolution[0], resolution[1]),
            hfov,
            data.get("scene_dataset_config"),
            scenes,
        )
    except MetadataError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise MetadataError(f"{path}: malformed metadata ({type(error).__name__}: {error})") from None
    if len(resolution) != 2 or min(resolution) <= 0 or not 0 < hfov < 180:
        raise MetadataError(f"{path}: resolution {list(resolution)} / hfov_deg {hfov} out of range")
    return metadata


# --------------------------------------------------------------------------------------------- export


def export_metadata(folder: str | Path, out: str | Path | None = None) -> PairMetadata:
    """The metadata of every pair of a shard folder (written to ``out`` when given).

    Scenes are listed in the order they first appear; a habitat shard names each pair's scene file
    (``scene_files``), other shards use the scene id as the file (e.g. ``synthetic-0-000003``).
    """
    shards = list_shards(folder)
    renderer = resolution = hfov = config = None
    scenes: dict[str, SceneMetadata] = {}
    for path in shards:
        reader = ShardReader(path)
        attrs = reader.attrs
        shard_resolution = tuple(int(v) for v in attrs["resolution"])
        shard_hfov = attrs.get("fov_deg")
        shard_renderer = str(attrs.get("renderer", attrs.get("source", "")))
        if shard_hfov is None:
            raise MetadataError(f"{path}: no fov_deg attribute; metadata needs one camera model per folder")
        if resolution is None:
            renderer, resolution, hfov = shard_renderer, shard_resolution, float(shard_hfov)
            config = attrs.get("scene_dataset_config") or None
        elif (shard_renderer, shard_resolution, float(shard_hfov)) != (renderer, resolution, hfov):
            raise MetadataError(
                f"{path}: renderer/resolution/fov {shard_renderer}, {shard_resolution}, {shard_hfov} differ "
                f"from the folder's first shard ({renderer}, {resolution}, {hfov})"
            )
        files = attrs.get(SCENE_FILES)
        fields = ("K1", "K2", "pose1", "pose2", "covis12", "covis21")
        if files is not None:
            fields += (SCENE_FILE_INDEX,)
        K = intrinsics_from_hfov(hfov, resolution[1], resolution[0])
        for i in range(len(reader)):
            data = reader.read(i, fields=fields)
            if not (np.allclose(data["K1"], K, atol=1e-6) and np.allclose(data["K2"], K, atol=1e-6)):
                raise MetadataError(f"{path} pair {i}: intrinsics are not the hfov {hfov} pinhole camera")
            scene = str(reader.scene[i])
            scene_file = files[int(data[SCENE_FILE_INDEX])] if files is not None else scene
            entry = scenes.setdefault(scene_file, SceneMetadata(scene, scene_file))
            entry.pairs.append(
                PairCameras.from_poses(data["pose1"], data["pose2"], data["covis12"], data["covis21"])
            )
    assert resolution is not None and hfov is not None and renderer is not None  # list_shards: >= 1 shard
    metadata = PairMetadata(renderer, resolution, hfov, config, list(scenes.values()))
    if out is not None:
        metadata.save(out)
    return metadata


# --------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderSetup:
    """How to build the renderer of a metadata file, in any process (picklable, unlike a simulator).

    ``habitat``: ``HabitatRenderer``; scene files resolve against ``data_root`` unless absolute.
    ``cpu``: the procedural rooms, rebuilt from their ids (``synthetic-<seed>-<index>``).
    """

    renderer: str
    resolution: tuple[int, int]
    hfov_deg: float
    data_root: str | None = None
    scene_dataset_config: str | None = None
    gpu_device_id: int = 0

    def build(self) -> tuple[Renderer, Callable[[str], NavigableScene]]:
        height, width = self.resolution
        if self.renderer == "habitat":
            from croco.synth.habitat import HabitatRenderer

            habitat = HabitatRenderer(
                self.resolution,
                self.hfov_deg,
                scene_dataset_config=self.scene_dataset_config,
                gpu_device_id=self.gpu_device_id,
            )
            root = Path(self.data_root or ".")
            return habitat, lambda scene_file: habitat.load_scene(root / scene_file)
        if self.renderer == "cpu":
            from croco.synth.render import CpuRenderer

            return CpuRenderer(height, width, semantics=False), _synthetic_scene
        raise MetadataError(f"renderer {self.renderer!r}: metadata can be rendered by 'habitat' or 'cpu'")


_SYNTHETIC_ID = re.compile(r"^synthetic-(?P<seed>-?\d+)-(?P<index>\d+)$")


def _synthetic_scene(scene_file: str) -> NavigableScene:
    from croco.synth.room import build_synthetic_scene

    match = _SYNTHETIC_ID.match(scene_file)
    if match is None:
        raise MetadataError(f"scene_file {scene_file!r}: not a procedural room id (synthetic-<seed>-<index>)")
    return build_synthetic_scene(int(match["seed"]), int(match["index"]))


@dataclass(frozen=True)
class SceneShardJob:
    """One scene of a metadata file, rendered into one shard."""

    index: int
    path: str
    scene: SceneMetadata
    setup: RenderSetup
    digest: str
    depth: bool
    jpeg_quality: int

    @property
    def count(self) -> int:
        return len(self.scene.pairs)


def render_from_metadata(
    metadata: PairMetadata,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    scene_dataset_config: str | None = None,
    gpu_device_id: int = 0,
    depth: bool = True,
    jpeg_quality: int = 95,
    workers: int = 0,
    num_jobs: int = 1,
    job_index: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Render every listed pair into ``out_dir/shard-<scene index>.h5`` (one shard per scene) with the
    file's renderer; returns this job's shard paths.

    Scene files (and the file's scene dataset config) resolve against ``data_root``; ``scene_dataset_config``
    overrides the file's. Runs through ``croco.data.shard_jobs`` like ``generate_pairs``: finished shards of
    the same metadata are kept (a resume; those of another file are a one-line error), ``workers`` processes,
    and ``num_jobs``/``job_index`` give each cluster job a contiguous block of scenes.
    """
    if not 0 <= job_index < num_jobs:
        raise ValueError(f"job_index must be in [0, num_jobs={num_jobs}), got {job_index}")
    root = Path(data_root) if data_root is not None else None
    config = scene_dataset_config
    if config is None and metadata.scene_dataset_config:
        config = str((root or Path(".")) / metadata.scene_dataset_config)
    setup = RenderSetup(
        metadata.renderer,
        metadata.resolution,
        metadata.hfov_deg,
        str(root) if root is not None else None,
        config,
        int(gpu_device_id),
    )
    if metadata.renderer == "habitat":
        from croco.synth.habitat import require_habitat

        require_habitat()
    out = Path(out_dir)
    digest = metadata.digest()
    count = len(metadata.scenes)
    per_job = math.ceil(count / num_jobs)
    jobs = [
        SceneShardJob(
            i, str(out / f"shard-{i:05d}.h5"), metadata.scenes[i], setup, digest, depth, jpeg_quality
        )
        for i in range(job_index * per_job, min(count, (job_index + 1) * per_job))
        if metadata.scenes[i].pairs
    ]
    height, width = metadata.resolution
    result = run_shard_jobs(
        out,
        jobs,
        write=write_scene_shard,
        check_existing=_check_existing,
        num_jobs=num_jobs,
        job_index=job_index,
        workers=workers,
        progress=progress,
        describe=f"pairs from metadata, renderer={metadata.renderer}, {height}x{width}",
        label="generate",
        what="rendering from metadata",
    )
    if result.stats:
        worst = max(stats["overlap_error"] for stats in result.stats)
        print(
            f"[generate] {result.pairs} pairs in {result.seconds:.1f} s; largest |overlap - listed overlap| "
            f"{worst:.4f}",
            flush=True,
        )
    return [Path(job.path) for job in jobs]


def _check_existing(job: SceneShardJob) -> None:
    """A finished shard is kept only if it was rendered from the same metadata; otherwise one line."""
    try:
        reader = ShardReader(job.path)
    except ShardError as error:
        raise ShardError(f"{error}; delete it and rerun to render it again") from None
    if reader.attrs.get("metadata_sha1") != job.digest or len(reader) != job.count:
        raise MetadataError(
            f"{job.path}: existing shard was rendered from other metadata; use another out folder or delete it"
        )


_WORKER: dict[str, Any] = {}
"""Per-process renderer (a simulator is built once per process and reused for its scenes)."""


def write_scene_shard(job: SceneShardJob, on_pair: Callable[[], None] | None = None) -> dict[str, Any]:
    """Render one scene's pairs into its shard (atomically); returns its largest overlap difference."""
    if _WORKER.get("setup") != job.setup:
        if "renderer" in _WORKER:
            _WORKER["renderer"].close()
        _WORKER.clear()
        renderer, load_scene = job.setup.build()
        _WORKER.update(setup=job.setup, renderer=renderer, load_scene=load_scene)
    renderer, entry = _WORKER["renderer"], job.scene
    scene = _WORKER["load_scene"](entry.scene_file)
    height, width = job.setup.resolution
    K = intrinsics_from_hfov(job.setup.hfov_deg, width, height)
    attrs = {
        "generator": GENERATOR_NAME,
        "renderer": job.setup.renderer,
        "metadata_sha1": job.digest,
        "scene_index": job.index,
        "scene_dataset_config": job.setup.scene_dataset_config or "",
        SCENE_FILES: [entry.scene_file],
        "with_depth": bool(job.depth),
        "world_frame": "y up, metres (the scene's own frame)",
        "camera_axes": "OpenCV (x right, y down, z forward); poses camera-to-world",
        "pixel_convention": PIXEL_CONVENTION,
    }
    worst = 0.0
    with ShardWriter(
        job.path,
        source="synthetic" if job.setup.renderer == "cpu" else job.setup.renderer,
        resolution=(height, width),
        fov_deg=job.setup.hfov_deg,
        jpeg_quality=job.jpeg_quality,
        attrs=attrs,
    ) as writer:
        for cameras in entry.pairs:
            pose1, pose2 = cameras.poses()
            view1, view2 = renderer.render(scene, K, pose1), renderer.render(scene, K, pose2)
            covis12, covis21 = covisibility(view1.depth, view2.depth, K, K, pose1, pose2)
            worst = max(worst, abs(min(covis12, covis21) - min(cameras.covis12, cameras.covis21)))
            writer.add(
                PairRecord(
                    image1=view1.rgb,
                    image2=view2.rgb,
                    K1=K,
                    K2=K,
                    pose1=pose1,
                    pose2=pose2,
                    covis12=covis12,
                    covis21=covis21,
                    scene=entry.scene,
                    depth1=view1.depth if job.depth else None,
                    depth2=view2.depth if job.depth else None,
                    extras={SCENE_FILE_INDEX: np.int32(0)},
                )
            )
            if on_pair is not None:
                on_pair()
        writer.update_attrs({"overlap_error": worst})
    return {"overlap_error": worst}


def render_metadata_file(metadata_file: str | Path, out_dir: str | Path, **options: Any) -> list[Path]:
    """``render_from_metadata`` of a metadata file (``python generate.py source=habitat metadata=FILE``)."""
    return render_from_metadata(load_metadata(metadata_file), out_dir, **options)


# --------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m croco.synth.metadata",
        description="Write the cameras of a shard folder's pairs (no images) as a metadata file; "
        "render them again with: python generate.py source=habitat metadata=FILE",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="shard folder -> metadata JSON")
    export.add_argument("folder")
    export.add_argument("--out", required=True, help="metadata file to write (JSON)")
    args = parser.parse_args(argv)
    try:
        metadata = export_metadata(args.folder, args.out)
    except (MetadataError, ShardError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {metadata.pair_count} pairs of {len(metadata.scenes)} scenes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
