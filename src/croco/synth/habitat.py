"""habitat-sim backend: render Habitat scenes (HM3D, Gibson, ScanNet, ReplicaCAD, ...) through ``Renderer``.

habitat-sim is not a pip package (conda/source builds only) and cannot be installed on every machine, so the
import is guarded: ``HABITAT_AVAILABLE`` says whether it loaded and ``require_habitat()`` raises a one-line
error that says how to get it. Everything that does not touch the simulator — camera sampling, co-visibility,
the shard writing — is shared with the procedural rooms (``croco.synth.pipeline``) and tested there; only the
thin calls below are habitat-specific:

- ``HabitatRenderer(resolution, hfov_deg)`` owns one ``habitat_sim.Simulator`` with a COLOR and a DEPTH
  ``CameraSensorSpec`` (sensor at the agent origin, so the agent state *is* the camera pose);
  ``load_scene(path)`` reconfigures it for a scene and returns a ``HabitatScene``;
- ``HabitatScene`` implements ``croco.synth.viewpoints.NavigableScene`` on the scene's navmesh
  (``pathfinder.get_random_navigable_point`` / ``snap_point`` / ``is_navigable``; a missing navmesh is
  recomputed with default ``NavMeshSettings``, as the released generator does), seeding the pathfinder from
  our generator so sampling stays deterministic;
- poses convert between OpenCV camera axes (x right, y down, z forward) and Habitat's (x right, y up, z back):
  ``R_habitat = R_opencv @ diag(1, -1, -1)``. Both worlds are y-up, so positions need no change.
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from croco.data.index import normalise_scene_id
from croco.synth.render import Renderer, Rendering, SceneUnusable

try:  # pragma: no cover - exercised only where habitat-sim is installed
    import habitat_sim  # type: ignore[import-not-found]

    HABITAT_AVAILABLE = True
    _IMPORT_ERROR = ""
except Exception as error:  # noqa: BLE001 - ImportError, or a broken build failing otherwise at import
    habitat_sim = None
    HABITAT_AVAILABLE = False
    _IMPORT_ERROR = f"{type(error).__name__}: {error}"

OPENCV_TO_HABITAT = np.diag([1.0, -1.0, -1.0])
"""Right-multiply an OpenCV camera-to-world rotation by this to get Habitat's camera axes (and back)."""


def require_habitat() -> None:
    """Raise a one-line error unless habitat-sim can be imported."""
    if not HABITAT_AVAILABLE:
        raise ImportError(
            "renderer 'habitat' needs habitat-sim, which pip cannot install: conda env create -f "
            "environment-habitat.yml (or conda install habitat-sim withbullet headless -c conda-forge "
            f"-c aihabitat-nightly in a Python 3.11 env; README, habitat-sim); import failed with {_IMPORT_ERROR}"
        )


def rotation_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(w, x, y, z) unit quaternion of a proper 3x3 rotation matrix (Shepperd's method, stable)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    sign = 1.0 if w >= 0 else -1.0  # canonical hemisphere
    return (sign * w / norm, sign * x / norm, sign * y / norm, sign * z / norm)


def quaternion_to_rotation(w: float, x: float, y: float, z: float) -> np.ndarray:
    """3x3 rotation of a (w, x, y, z) quaternion (normalised first)."""
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def habitat_camera_state(pose: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """(position, (w, x, y, z) rotation) of the Habitat agent whose camera has this OpenCV camera-to-world
    pose.
    """
    pose = np.asarray(pose, dtype=np.float64)
    return pose[:3, 3].copy(), rotation_to_quaternion(pose[:3, :3] @ OPENCV_TO_HABITAT)


class HabitatScene:
    """A loaded Habitat scene as a ``NavigableScene`` backed by the simulator's pathfinder; ``scene_id`` is the
    split id (``normalise_scene_id``), ``path`` the scene file."""

    def __init__(self, scene_id: str, path: str, pathfinder) -> None:
        self.scene_id = scene_id
        self.path = path
        self.pathfinder = pathfinder

    def sample_navigable_point(self, rng: np.random.Generator) -> np.ndarray:
        # The pathfinder has its own generator; seeding it from ours keeps pair sampling reproducible.
        self.pathfinder.seed(int(rng.integers(0, 2**31 - 1)))
        return np.asarray(self.pathfinder.get_random_navigable_point(), dtype=np.float64)

    def snap_point(self, point: np.ndarray) -> np.ndarray:
        return np.asarray(self.pathfinder.snap_point(np.asarray(point, dtype=np.float32)), dtype=np.float64)

    def is_navigable(self, point: np.ndarray) -> bool:
        return bool(self.pathfinder.is_navigable(np.asarray(point, dtype=np.float32)))


SCENE_SUFFIXES = (".basis.glb", ".glb", ".ply", ".obj", ".scene_instance.json")
GENERIC_SCENE_NAMES = ("mesh", "mesh_semantic", "scene", "habitat", "textured")
"""File (or folder) names that do not name a scene, e.g. Replica's ``apartment_0/habitat/mesh_semantic.ply``:
the scene id is then the nearest parent folder with another name."""


def scene_id_from_path(path: str | os.PathLike) -> str:
    """Stable scene id of a scene file: its name without the (possibly double) extension, e.g. ``wcojb4TFT35``
    for HM3D's ``00800-TEEsavR23oF/wcojb4TFT35.basis.glb``; generic names (``mesh_semantic.ply``) take the
    nearest informative parent folder (``apartment_0``). ScanNet's ``scene0000_00_vh_clean.glb`` gives
    ``scene0000_00``; ``croco.data.index.normalise_scene_id`` then drops the rescan number for the split
    (``HabitatScene.scene_id``)."""
    path = Path(path)
    name = path.name
    for suffix in SCENE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = path.stem
    scannet = re.match(r"^(scene\d{4}_\d{2})", name)
    if scannet:
        return scannet.group(1)
    for part in [name, *(parent.name for parent in path.parents)]:
        if part and part not in GENERIC_SCENE_NAMES:
            return part
    return name


def resolve_scene_dataset(
    preset: str,
    datasets: Mapping[str, Mapping],
    data_root: str | os.PathLike,
    split: str | None,
    scenes: Sequence[str] = (),
) -> tuple[list[Path], Path | None]:
    """(scene files, scene dataset config or None) of a scene-dataset preset (``conf/source/habitat.yaml``).

    ``datasets[preset]`` has ``splits`` (split name -> glob patterns relative to ``data_root``) and
    ``config`` (a ``*.scene_dataset_config.json`` relative to ``data_root``, or null). ``split`` null takes
    the preset's only split when it has one. ``scenes`` keeps the files whose scene id (raw or normalised)
    matches one of these fnmatch patterns (e.g. ``scene0000_*``). Errors are one line naming the value.
    """
    if preset not in datasets:
        raise ValueError(f"scene_dataset={preset}: unknown preset; allowed: {', '.join(sorted(datasets))}")
    entry = datasets[preset]
    splits = dict(entry["splits"])
    if split is None:
        if len(splits) != 1:
            raise ValueError(f"scene_dataset={preset}: choose split= one of {', '.join(splits)}")
        split = next(iter(splits))
    if split not in splits:
        raise ValueError(f"split={split}: scene_dataset={preset} has splits {', '.join(splits)}")
    root = Path(data_root)
    files: list[Path] = []
    for pattern in splits[split]:
        matches = sorted(Path(p) for p in glob.glob(str(root / pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(
                f"scene_dataset={preset} split={split}: {root / pattern} matches no file (download the scene "
                f"dataset under {root}, or set source.data_root)"
            )
        files.extend(matches)
    # HM3D's semantic meshes sit next to the scenes and are no scenes themselves
    files = _prefer_basis([f for f in files if not f.name.endswith(".semantic.glb")])
    if scenes:
        wanted = [str(s) for s in scenes]
        files = [
            f
            for f in files
            if any(
                fnmatch.fnmatchcase(scene_id_from_path(f), w)
                or fnmatch.fnmatchcase(normalise_scene_id(scene_id_from_path(f)), w)
                for w in wanted
            )
        ]
        if not files:
            raise ValueError(f"scenes={wanted}: no scene of scene_dataset={preset} split={split} matches")
    config = entry.get("config")
    return files, (root / config if config else None)


def _prefer_basis(files: list[Path]) -> list[Path]:
    """HM3D ships ``x.glb`` and ``x.basis.glb`` (compressed textures); keep the ``.basis.glb`` one when both
    match, as the released generator does."""
    names = {str(f) for f in files}
    return [
        f
        for f in files
        if f.name.endswith(".basis.glb")
        or not f.name.endswith(".glb")
        or f"{str(f)[:-4]}.basis.glb" not in names
    ]


def relative_scene_file(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """``path`` relative to the scene-dataset root when it lies under it (metadata stays portable), else as
    given."""
    path = Path(path)
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


class HabitatRenderer(Renderer):
    """habitat-sim renderer with COLOR + DEPTH sensors at ``resolution`` (H, W) and ``hfov_deg``.

    ``render`` accepts only the K its sensors produce (principal point at the centre, f from hfov), since a
    habitat sensor cannot take arbitrary intrinsics.
    """

    def __init__(
        self,
        resolution: tuple[int, int] = (256, 256),
        hfov_deg: float = 60.0,
        *,
        scene_dataset_config: str | None = None,
        gpu_device_id: int = 0,
    ) -> None:
        require_habitat()
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.hfov_deg = float(hfov_deg)
        self.scene_dataset_config = scene_dataset_config
        self.gpu_device_id = int(gpu_device_id)
        self._sim = None
        self._scene: HabitatScene | None = None

    def _configuration(self, scene_path: str):
        backend = habitat_sim.SimulatorConfiguration()
        backend.scene_id = scene_path
        if self.scene_dataset_config:
            backend.scene_dataset_config_file = self.scene_dataset_config
        backend.gpu_device_id = self.gpu_device_id
        backend.enable_physics = False
        sensors = []
        for uuid, kind in (("color", habitat_sim.SensorType.COLOR), ("depth", habitat_sim.SensorType.DEPTH)):
            spec = habitat_sim.CameraSensorSpec()
            spec.uuid = uuid
            spec.sensor_type = kind
            spec.resolution = [self.resolution[0], self.resolution[1]]
            spec.hfov = self.hfov_deg
            spec.position = [0.0, 0.0, 0.0]
            spec.orientation = [0.0, 0.0, 0.0]
            sensors.append(spec)
        agent = habitat_sim.agent.AgentConfiguration()
        agent.sensor_specifications = sensors
        return habitat_sim.Configuration(backend, [agent])

    def load_scene(self, scene_path: str | os.PathLike) -> HabitatScene:
        """Load (or switch to) a scene; recompute the navmesh with defaults if the scene has none."""
        path = str(scene_path)
        if self._scene is not None and self._scene.path == path:
            return self._scene
        if not Path(path).exists() and not self.scene_dataset_config:
            raise FileNotFoundError(f"habitat scene {path} does not exist")
        configuration = self._configuration(path)
        if self._sim is None:
            self._sim = habitat_sim.Simulator(configuration)
        else:
            self._sim.reconfigure(configuration)
        pathfinder = self._sim.pathfinder
        if not pathfinder.is_loaded:
            settings = habitat_sim.NavMeshSettings()
            settings.set_defaults()
            self._sim.recompute_navmesh(pathfinder, settings)
        if not pathfinder.is_loaded:
            raise SceneUnusable(f"habitat scene {path}: no navmesh and none could be computed")
        self._scene = HabitatScene(normalise_scene_id(scene_id_from_path(path)), path, pathfinder)
        return self._scene

    def render(self, scene: HabitatScene, K: np.ndarray, pose: np.ndarray) -> Rendering:
        from croco.geometry.cameras import intrinsics_from_hfov

        if self._sim is None or scene is not self._scene:
            raise ValueError(
                f"HabitatRenderer.render: scene {getattr(scene, 'scene_id', scene)!r} is not loaded "
                "(call load_scene first)"
            )
        expected = intrinsics_from_hfov(self.hfov_deg, self.resolution[1], self.resolution[0])
        if not np.allclose(K, expected, rtol=1e-6, atol=1e-6):
            raise ValueError(
                f"HabitatRenderer renders K from hfov {self.hfov_deg} at {self.resolution}, got K={K}"
            )
        position, (w, x, y, z) = habitat_camera_state(pose)
        state = habitat_sim.AgentState()
        state.position = position.astype(np.float32)
        state.rotation = _habitat_quaternion(w, x, y, z)
        self._sim.get_agent(0).set_state(state)
        observations = self._sim.get_sensor_observations()
        rgb = np.ascontiguousarray(np.asarray(observations["color"])[..., :3], dtype=np.uint8)
        depth = np.asarray(observations["depth"], dtype=np.float32).reshape(self.resolution)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        return Rendering(rgb, depth, None)

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
        self._sim = None
        self._scene = None


def _habitat_quaternion(w: float, x: float, y: float, z: float):
    """habitat-sim's AgentState.rotation type (numpy-quaternion, installed with habitat-sim)."""
    import quaternion  # type: ignore[import-not-found]  # numpy-quaternion

    return quaternion.quaternion(w, x, y, z)
