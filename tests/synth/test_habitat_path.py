"""The habitat-sim generation path without habitat-sim: scene-dataset presets, scene ids (ScanNet rescans), one
shard per scene, metadata export and re-rendering, overlap up to 1.0, and the one-line error when habitat-sim is
missing. The simulator is replaced by a fake with the same interface (``load_scene`` / ``render`` / ``close``);
the metadata round trip is also checked with the CPU renderer on the procedural rooms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from croco.data.index import PairSource, build_index, is_val_scene, normalise_scene_id
from croco.data.shards import ShardReader, list_shards
from croco.geometry.cameras import camera_rays
from croco.synth import habitat
from croco.synth.metadata import (
    MetadataError,
    PairCameras,
    export_metadata,
    load_metadata,
    render_from_metadata,
)
from croco.synth.pipeline import SCENE_FILE_INDEX, SCENE_FILES, generate_pairs
from croco.synth.render import Renderer, Rendering
from tests.generate_app import compose_generate, generate_script

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeHabitatScene:
    """A flat navmesh (the square [low, high]^2 at y = 0) in front of a wall; ``path`` as HabitatScene has."""

    def __init__(self, scene_id: str, path: str, low: float = 0.0, high: float = 10.0) -> None:
        self.scene_id, self.path, self.low, self.high = scene_id, path, low, high

    def sample_navigable_point(self, rng):
        x, z = rng.uniform(self.low, self.high, size=2)
        return np.array([x, 0.0, z])

    def snap_point(self, point):
        return np.array([np.clip(point[0], self.low, self.high), 0.0, np.clip(point[2], self.low, self.high)])

    def is_navigable(self, point) -> bool:
        return bool(self.low <= point[0] <= self.high and self.low <= point[2] <= self.high)


class FakeHabitatRenderer(Renderer):
    """``HabitatRenderer``'s interface over a textured wall at z = 12 (depth 0 elsewhere). The wall's pattern
    depends on the scene file, so a pair rendered in the wrong scene shows; a scene file named ``spot*`` has a
    navmesh of 10 cm, so both views of a pair stand at (nearly) one place."""

    def __init__(self, resolution=(256, 256), hfov_deg=60.0, *, scene_dataset_config=None, gpu_device_id=0):
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.scene_dataset_config = scene_dataset_config
        self.loaded: list[str] = []

    def load_scene(self, path) -> FakeHabitatScene:
        if not Path(path).exists():
            raise FileNotFoundError(f"habitat scene {path} does not exist")
        self.loaded.append(str(path))
        scene_id = normalise_scene_id(habitat.scene_id_from_path(path))
        extent = (3.0, 3.1) if Path(path).name.startswith("spot") else (0.0, 10.0)
        return FakeHabitatScene(scene_id, str(path), *extent)

    def render(self, scene, K, pose) -> Rendering:
        rays = camera_rays(K, *self.resolution) @ pose[:3, :3].T
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (12.0 - pose[2, 3]) / rays[..., 2]
        depth = np.where(np.isfinite(t) & (t > 0), t, 0.0).astype(np.float32)
        points = pose[:3, 3] + rays * depth[..., None]
        cells = 2 + len(scene.path) % 5
        shade = ((np.floor(points[..., 0] * cells) + np.floor(points[..., 1] * cells)) % 2 * 200 + 30) * (depth > 0)
        return Rendering(np.repeat(shade[..., None], 3, axis=2).astype(np.uint8), depth, None)


@pytest.fixture
def fake_habitat(monkeypatch):
    """habitat-sim 'installed' as the fake renderer (what the pipeline and generate.py look up at call time)."""
    monkeypatch.setattr(habitat, "HABITAT_AVAILABLE", True)
    monkeypatch.setattr(habitat, "require_habitat", lambda: None)
    monkeypatch.setattr(habitat, "HabitatRenderer", FakeHabitatRenderer)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"glTF")


def _compose(*overrides: str):
    return compose_generate("source=habitat", "progress=false", *overrides)


SCANNET = ("scannet/scans/scene0000_00/scene0000_00_vh_clean.glb",
           "scannet/scans/scene0000_01/scene0000_01_vh_clean.glb",
           "scannet/scans/scene0001_00/scene0001_00_vh_clean.glb")  # fmt: skip


# --------------------------------------------------------------------------------------------- scene ids


def test_scene_ids_of_the_scene_datasets_and_scannet_rescans():
    assert habitat.scene_id_from_path("hm3d/train/00800-TEEsavR23oF/TEEsavR23oF.basis.glb") == "TEEsavR23oF"
    assert habitat.scene_id_from_path("replica/apartment_0/habitat/mesh_semantic.ply") == "apartment_0"
    assert habitat.scene_id_from_path("configs/scenes/Baked_sc0_staging_00.scene_instance.json") == (
        "Baked_sc0_staging_00"
    )
    assert habitat.scene_id_from_path(SCANNET[1]) == "scene0000_01"
    # rescans of one room are one scene of the split; another room stays another scene
    ids = [normalise_scene_id(habitat.scene_id_from_path(f)) for f in SCANNET]
    assert ids == ["scene0000", "scene0000", "scene0001"]
    assert all(is_val_scene(ids[0], f) == is_val_scene(ids[1], f) for f in np.linspace(0.01, 0.99, 99))
    assert normalise_scene_id("Baked_sc0_staging_00") == "Baked_sc0_staging_00"  # not a ScanNet id


def test_presets_resolve_splits_and_scene_filters(tmp_path):
    datasets = _compose().source.datasets
    _touch(tmp_path, "hm3d/train/00000-aaa/aaa.glb", "hm3d/train/00000-aaa/aaa.basis.glb",
           "hm3d/train/00000-aaa/aaa.semantic.glb", "hm3d/train/00001-bbb/bbb.glb", *SCANNET)  # fmt: skip
    files, config = habitat.resolve_scene_dataset("hm3d", datasets, tmp_path, "train")
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "hm3d/train/00000-aaa/aaa.basis.glb",  # preferred over aaa.glb; the semantic mesh is no scene
        "hm3d/train/00001-bbb/bbb.glb",
    ]
    assert config is None
    files, _ = habitat.resolve_scene_dataset("scannet", datasets, tmp_path, None, ["scene0000"])
    assert [f.name for f in files] == ["scene0000_00_vh_clean.glb", "scene0000_01_vh_clean.glb"]
    with pytest.raises(ValueError, match=r"scene_dataset=mp3d: unknown preset; allowed: gibson, "):
        habitat.resolve_scene_dataset("mp3d", datasets, tmp_path, None)
    with pytest.raises(ValueError, match=r"split=test: scene_dataset=hm3d has splits train, val"):
        habitat.resolve_scene_dataset("hm3d", datasets, tmp_path, "test")
    with pytest.raises(ValueError, match=r"scene_dataset=hm3d: choose split= one of train"):
        habitat.resolve_scene_dataset("hm3d", datasets, tmp_path, None)
    with pytest.raises(FileNotFoundError, match=r"scene_dataset=gibson split=all: .*gibson/\*\.glb matches no"):
        habitat.resolve_scene_dataset("gibson", datasets, tmp_path, None)
    with pytest.raises(ValueError, match=r"no scene of scene_dataset=scannet split=all matches"):
        habitat.resolve_scene_dataset("scannet", datasets, tmp_path, None, ["scene9999"])
    _touch(tmp_path, "replica_cad_baked_lighting/configs/scenes/Baked_sc0_staging_00.scene_instance.json")
    files, config = habitat.resolve_scene_dataset("replicacad", datasets, tmp_path, None)
    assert config == tmp_path / "replica_cad_baked_lighting/replicaCAD_baked.scene_dataset_config.json"


# --------------------------------------------------------------------------------------------- generation


def test_preset_generation_writes_one_shard_per_scene_and_the_metadata_round_trip(tmp_path, fake_habitat):
    _touch(tmp_path / "scenes", *SCANNET)
    script = generate_script()
    common = [f"source.data_root={tmp_path / 'scenes'}", "resolution=32", "pairs_per_scene=2", "overlap_min=0.3"]
    cfg = _compose("scene_dataset=scannet", f"out={tmp_path / 'gen'}", *common)
    assert script.run(cfg) == 0
    shards = list_shards(tmp_path / "gen")
    assert len(shards) == 3  # pairs: null -> 3 scenes x 2 pairs, pairs_per_shard = pairs_per_scene
    for shard, scene_file in zip(shards, SCANNET):
        reader = ShardReader(shard)
        assert reader.attrs[SCENE_FILES] == [scene_file]  # relative to the scene-dataset root
        assert list(reader.scene) == [normalise_scene_id(habitat.scene_id_from_path(scene_file))] * 2
        assert [int(reader.read(i, fields=(SCENE_FILE_INDEX,))[SCENE_FILE_INDEX]) for i in range(2)] == [0, 0]
        assert reader.attrs["overlap_max"] == 1.0 and reader.attrs["overlap_min"] == 0.3

    metadata = export_metadata(tmp_path / "gen", tmp_path / "pairs.json")
    assert [s.scene_file for s in metadata.scenes] == list(SCANNET) and metadata.pair_count == 6
    assert load_metadata(tmp_path / "pairs.json").to_json() == metadata.to_json()

    cfg = _compose(f"metadata={tmp_path / 'pairs.json'}", f"out={tmp_path / 'again'}", *common)
    assert script.run(cfg) == 0
    again = list_shards(tmp_path / "again")
    assert len(again) == 3
    for first, second in zip(shards, again):
        a, b = ShardReader(first), ShardReader(second)
        assert list(a.scene) == list(b.scene) and b.attrs[SCENE_FILES] == a.attrs[SCENE_FILES]
        for i in range(len(a)):
            x = a.read(i, fields=("image1", "image2", "pose1", "pose2", "covis12", "covis21"))
            y = b.read(i, fields=("image1", "image2", "pose1", "pose2", "covis12", "covis21"))
            np.testing.assert_allclose(y["pose1"], x["pose1"], atol=1e-9)
            np.testing.assert_allclose(y["pose2"], x["pose2"], atol=1e-9)
            assert (y["covis12"], y["covis21"]) == pytest.approx((x["covis12"], x["covis21"]), abs=2e-3)
            for view in ("image1", "image2"):  # the same scene, the same camera: the same picture
                assert np.mean(np.abs(np.asarray(y[view]).astype(int) - np.asarray(x[view]).astype(int))) < 1.0
    # a rerun keeps every scene's shard; other metadata in the same folder is refused in one line
    mtimes = [p.stat().st_mtime_ns for p in again]
    assert script.run(cfg) == 0 and [p.stat().st_mtime_ns for p in again] == mtimes
    data = json.loads((tmp_path / "pairs.json").read_text())
    data["scenes"][0]["pairs"][0]["positions"][0][0] += 0.1
    (tmp_path / "other.json").write_text(json.dumps(data))
    with pytest.raises(MetadataError, match="rendered from other metadata"):
        render_from_metadata(load_metadata(tmp_path / "other.json"), tmp_path / "again",
                             data_root=tmp_path / "scenes", progress=False)  # fmt: skip


def test_cluster_jobs_take_blocks_of_scenes(tmp_path, fake_habitat):
    _touch(tmp_path / "scenes", *SCANNET)
    script = generate_script()
    common = [f"source.data_root={tmp_path / 'scenes'}", "resolution=32", "pairs_per_scene=1", "overlap_min=0.3",
              "scene_dataset=scannet", f"out={tmp_path / 'gen'}", "num_jobs=2"]  # fmt: skip
    assert script.run(_compose(*common, "job_index=1")) == 0
    assert [p.name for p in list_shards(tmp_path / "gen")] == ["shard-00002.h5"]
    assert script.run(_compose(*common, "job_index=0")) == 0
    assert [p.name for p in list_shards(tmp_path / "gen")] == [f"shard-0000{i}.h5" for i in range(3)]


def test_overlap_up_to_one_end_to_end(tmp_path, fake_habitat):
    """The paper has no upper cap: overlap_max=1.0 keeps pairs above 0.95, and training's filter keeps them."""
    _touch(tmp_path / "scenes", "habitat-test-scenes/spot.glb")
    cfg = _compose("scene_dataset=habitat_test_scenes", f"source.data_root={tmp_path / 'scenes'}",
                   f"out={tmp_path / 'gen'}", "resolution=32", "pairs_per_scene=4", "overlap_min=0.95",
                   "overlap_max=1.0")  # fmt: skip
    assert generate_script().run(cfg) == 0
    (shard,) = list_shards(tmp_path / "gen")
    overlaps = ShardReader(shard).overlap
    assert len(overlaps) == 4 and (overlaps > 0.95).all() and (overlaps <= 1.0).all()
    train, val, _ = build_index([PairSource(tmp_path / "gen")], 0.5, 1.0, 0.0)
    assert len(train) == 4 and len(val) == 0


def test_metadata_round_trip_with_the_cpu_renderer(tmp_path):
    generate_pairs(tmp_path / "gen", 4, seed=3, resolution=40, pairs_per_shard=2, pairs_per_scene=2,
                   overlap_min=0.2, overlap_max=1.0, progress=False)  # fmt: skip
    metadata = export_metadata(tmp_path / "gen")
    assert metadata.renderer == "cpu" and [s.scene_file for s in metadata.scenes] == [
        "synthetic-3-000000",
        "synthetic-3-000001",
    ]
    paths = render_from_metadata(metadata, tmp_path / "again", progress=False)
    original = [ShardReader(p) for p in list_shards(tmp_path / "gen")]
    for old, new in zip(original, (ShardReader(p) for p in paths)):
        assert list(old.scene) == list(new.scene)
        for i in range(len(old)):
            x, y = old.read(i, fields=("image1", "image2", "pose2")), new.read(i, fields=("image1", "image2", "pose2"))
            np.testing.assert_allclose(y["pose2"], x["pose2"], atol=1e-9)
            for view in ("image1", "image2"):
                same = np.mean(np.all(np.asarray(y[view]) == np.asarray(x[view]), axis=-1))
                assert same > 0.98  # identical renders, up to a pixel edge moved by 1e-16 of rotation
        np.testing.assert_allclose(new.overlap, old.overlap, atol=1e-3)


def test_pair_cameras_convert_poses_exactly():
    rng = np.random.default_rng(0)
    from croco.geometry.cameras import look_at, make_pose

    for _ in range(5):
        eye, target = rng.normal(size=3), rng.normal(size=3) + 3
        pose1, pose2 = make_pose(look_at(eye, target), eye), make_pose(look_at(target, eye), target)
        cameras = PairCameras.from_poses(pose1, pose2, 0.7, 0.6)
        back = cameras.poses()
        np.testing.assert_allclose(back[0], pose1, atol=1e-12)
        np.testing.assert_allclose(back[1], pose2, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(cameras.orientations, axis=1), 1.0)


def test_bad_metadata_files_are_one_line_errors(tmp_path):
    with pytest.raises(MetadataError, match="does not exist"):
        load_metadata(tmp_path / "none.json")
    (tmp_path / "a.json").write_text('{"format": "other"}')
    with pytest.raises(MetadataError, match=r"a.json: expected 'format': 'croco-pair-metadata'"):
        load_metadata(tmp_path / "a.json")
    good = {"format": "croco-pair-metadata", "version": 1, "renderer": "habitat", "resolution": [32, 32],
            "hfov_deg": 60.0, "scene_dataset_config": None,
            "scenes": [{"scene": "s", "scene_file": "s.glb",
                        "pairs": [{"positions": [[0, 0, 0]], "orientations": [[1, 0, 0, 0], [1, 0, 0, 0]],
                                   "covisibility": [0.5, 0.5]}]}]}  # fmt: skip
    (tmp_path / "b.json").write_text(json.dumps(good))
    with pytest.raises(MetadataError, match=r"b.json: scenes\[0\].pairs\[0\]: expected positions 2x3"):
        load_metadata(tmp_path / "b.json")


# --------------------------------------------------------------------------------------------- no habitat-sim


@pytest.mark.skipif(habitat.HABITAT_AVAILABLE, reason="checks the error shown when habitat-sim is missing")
def test_source_habitat_without_habitat_sim_fails_at_once_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop("CROCO_DEBUG", None)
    for extra in ("scene_dataset=hm3d", f"metadata={tmp_path / 'missing.json'}"):
        done = subprocess.run(
            [sys.executable, str(REPO_ROOT / "generate.py"), "source=habitat", extra, f"out={tmp_path / 'out'}",
             f"hydra.run.dir={tmp_path / 'run'}"],
            check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith("error: renderer 'habitat' needs habitat-sim")
        assert "conda env create -f environment-habitat.yml" in lines[0]
        assert not (tmp_path / "out").exists()  # nothing was created before the check
