"""Pair generation: the sampler through the Renderer interface (fake + CPU), the structure filter, per-view
appearance, shards, determinism, resume, tasks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from croco.data.shards import ShardReader, list_shards
from croco.geometry.cameras import camera_rays, intrinsics_from_hfov
from croco.geometry.covisibility import covisibility, optical_flow
from croco.synth import pipeline as generate_module
from croco.synth.pipeline import generate_pairs
from croco.synth.render import Renderer, Rendering, SceneUnusable
from croco.synth.sampler import (
    GenerationStats,
    PairOptions,
    PairSampler,
    photometric,
    structure_fraction,
    valid_fraction,
)
from croco.synth.scene import SURFACE_CLASSES, simple_scene

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = {"resolution": 48, "pairs_per_shard": 3, "pairs_per_scene": 4, "progress": False}


class WallRenderer(Renderer):
    """Fake backend: an infinite textured wall at world z = 12 and nothing else (depth 0 elsewhere)."""

    wall_z = 12.0

    def __init__(self, size: int = 32) -> None:
        self.resolution = (size, size)
        self.calls = 0

    def render(self, scene, K, pose) -> Rendering:
        self.calls += 1
        rays = camera_rays(K, *self.resolution) @ pose[:3, :3].T
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.wall_z - pose[2, 3]) / rays[..., 2]
        depth = np.where(np.isfinite(t) & (t > 0), t, 0.0).astype(np.float32)
        points = pose[:3, 3] + rays * depth[..., None]
        shade = ((np.floor(points[..., 0] * 4) + np.floor(points[..., 1] * 4)) % 2 * 200 + 30) * (depth > 0)
        return Rendering(np.repeat(shade[..., None], 3, axis=2).astype(np.uint8), depth, None)


class Yard:
    """NavigableScene: the square [0, 10]^2 in front of the wall (snap = clamp into the square)."""

    scene_id = "yard"

    def sample_navigable_point(self, rng):
        x, z = rng.uniform(0, 10, size=2)
        return np.array([x, 0.0, z])

    def snap_point(self, point):
        return np.array([np.clip(point[0], 0, 10), 0.0, np.clip(point[2], 0, 10)])

    def is_navigable(self, point) -> bool:
        return bool(0 <= point[0] <= 10 and 0 <= point[2] <= 10)


def test_sampler_applies_the_valid_depth_and_overlap_rules_through_the_renderer_interface():
    renderer = WallRenderer()
    options = PairOptions(overlap_min=0.3, overlap_max=0.9)
    sampler = PairSampler(renderer, options)
    stats = GenerationStats()
    rng = np.random.default_rng(0)
    pairs = [sampler.sample(Yard(), rng, stats) for _ in range(12)]
    for pair in pairs:
        assert valid_fraction(pair.view1.depth) >= 0.7 and valid_fraction(pair.view2.depth) >= 0.7
        assert 0.3 <= pair.overlap <= 0.9
        recomputed = covisibility(pair.view1.depth, pair.view2.depth, pair.K, pair.K, pair.pose1, pair.pose2)
        assert recomputed == pytest.approx((pair.covis12, pair.covis21))
    # half of the random headings look away from the only wall: those references must have been rejected
    assert stats.reference_rejected_valid > 0
    assert stats.reference_rejected_structure == stats.rejected_structure == 0  # no semantics: no check
    assert (
        stats.reference_attempts == stats.pairs + stats.reference_rejected_valid + stats.references_exhausted
    )
    rejected = (
        stats.rejected_degenerate
        + stats.rejected_valid
        + stats.screened_out
        + stats.rejected_low_overlap
        + stats.rejected_high_overlap
    )
    assert stats.second_attempts == stats.pairs + rejected and stats.pairs == 12
    assert renderer.calls == stats.reference_attempts + stats.second_attempts - stats.rejected_degenerate


def _one_block_room():
    """A bare 6 x 3 x 6 m room with one 2 m block against a wall: most random views see only bare room."""
    return simple_scene((6.0, 3.0, 6.0), [((3.0, 0.75, 0.5), (1.0, 0.75, 0.4), 0.0)], scene_id="block")


def test_structure_filter_rejects_bare_views_and_counts_them():
    from croco.synth.render import CpuRenderer

    scene = _one_block_room()
    renderer, screen = CpuRenderer(64), CpuRenderer(16, semantics=False)
    options = PairOptions(min_structure=0.2)
    sampler = PairSampler(renderer, options, screen_renderer=screen)
    stats = GenerationStats()
    rng = np.random.default_rng(0)
    pairs = [sampler.sample(scene, rng, stats) for _ in range(4)]
    for pair in pairs:
        assert (
            structure_fraction(pair.view1.semantics) >= 0.2
            and structure_fraction(pair.view2.semantics) >= 0.2
        )
    assert stats.reference_rejected_structure > 0 and stats.rejected_structure > 0
    summary = stats.summary()
    assert f"{stats.reference_rejected_structure} for structure < min_structure" in summary
    assert f"{stats.rejected_structure} structure" in summary
    assert (
        stats.reference_attempts
        == stats.pairs
        + stats.reference_rejected_valid
        + stats.reference_rejected_structure
        + stats.references_exhausted
    )
    # without the check, the same draws give bare views
    unfiltered = PairSampler(renderer, PairOptions(min_structure=0.0), screen_renderer=screen)
    rng = np.random.default_rng(0)
    views = [unfiltered.sample(scene, rng, GenerationStats()).view1 for _ in range(6)]
    assert min(structure_fraction(view.semantics) for view in views) < 0.2
    with pytest.raises(ValueError, match="min_structure"):
        PairOptions(min_structure=1.5)


def test_appearance_options_change_the_colours_only_and_are_deterministic():
    from croco.synth.render import CpuRenderer

    scene = _one_block_room()
    renderer = CpuRenderer(48)
    plain = PairSampler(renderer, PairOptions(min_structure=0.1))
    styled_options = PairOptions(min_structure=0.1, exposure_std=0.5, white_balance_std=0.05, noise_std=3.0)
    styled = PairSampler(renderer, styled_options)
    a = plain.sample(scene, np.random.default_rng(7), GenerationStats())
    b = styled.sample(scene, np.random.default_rng(7), GenerationStats())
    again = styled.sample(scene, np.random.default_rng(7), GenerationStats())
    np.testing.assert_array_equal(a.pose2, b.pose2)  # the same pair ...
    np.testing.assert_array_equal(a.view2.depth, b.view2.depth)
    assert np.abs(a.view1.rgb.astype(int) - b.view1.rgb.astype(int)).mean() > 2.0  # ... in other colours
    np.testing.assert_array_equal(b.view1.rgb, again.view1.rgb)  # deterministic per pair seed
    np.testing.assert_array_equal(b.view2.rgb, again.view2.rgb)
    # exposure through the tone curve: brighter, saturated stays white, black stays black; noise as asked
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    brighter = photometric(ramp, np.random.default_rng(0), 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(brighter, ramp)  # identity without changes
    rng = np.random.default_rng(1)
    while (gain_view := photometric(ramp, rng, 0.5, 0.0, 0.0)).astype(int).sum() <= ramp.astype(int).sum():
        pass  # draw until the exposure goes up
    assert (
        np.all(gain_view.astype(int) >= ramp.astype(int))
        and gain_view[0, 255, 0] == 255
        and gain_view[0, 0, 0] == 0
    )
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    noisy = photometric(grey, np.random.default_rng(2), 0.0, 0.0, 4.0).astype(float)
    assert noisy.std() == pytest.approx(4.0, rel=0.1)


def test_sampler_gives_up_with_a_clear_error():
    sampler = PairSampler(
        WallRenderer(16),
        PairOptions(overlap_min=0.999, overlap_max=1.0, max_second_attempts=2, max_references=3),
    )
    with pytest.raises(SceneUnusable, match="yard: no pretrain pair with overlap in"):
        sampler.sample(Yard(), np.random.default_rng(0), GenerationStats())


class NoNavmesh(Yard):
    scene_id = "broken"

    def sample_navigable_point(self, rng):
        raise SceneUnusable("habitat scene broken.glb: no navmesh and none could be computed")


def test_unusable_scenes_are_skipped_counted_and_the_choice_is_deterministic(monkeypatch, capsys):
    scenes = {0: NoNavmesh(), 1: Yard()}
    monkeypatch.setattr(
        generate_module, "_worker_scene", lambda config, index: scenes.get(index, NoNavmesh())
    )
    config = generate_module.GeneratorConfig(
        pairs_per_scene=4, options=PairOptions(overlap_min=0.3, overlap_max=0.9)
    )
    sampler = PairSampler(WallRenderer(), config.options)
    stats = GenerationStats()
    pair, scene = generate_module._sample_slot(config, sampler, 2, stats)  # slot 2: scene 0 is broken -> 1
    assert scene.scene_id == "yard" and stats.scenes_skipped == 1 and stats.pairs == 1
    assert "skipped: habitat scene broken.glb: no navmesh" in capsys.readouterr().out
    again, _ = generate_module._sample_slot(config, sampler, 2, GenerationStats())
    assert np.array_equal(pair.pose1, again.pose1) and np.array_equal(pair.pose2, again.pose2)
    with pytest.raises(RuntimeError, match="pair 9: 8 scenes in a row gave no pair"):
        generate_module._sample_slot(config, sampler, 9, GenerationStats())  # scenes 2.. are all broken


def _records(folder: Path) -> list[dict]:
    out = []
    for path in list_shards(folder):
        reader = ShardReader(path)
        for i in range(len(reader)):
            data = reader.read(i, fields=reader.fields)
            data["encoded"] = reader.encoded_images(i)
            out.append(data)
    return out


def _assert_same(records_a: list[dict], records_b: list[dict]) -> None:
    assert len(records_a) == len(records_b)
    for a, b in zip(records_a, records_b):
        assert a["encoded"] == b["encoded"] and a["scene"] == b["scene"]
        for key in ("pose1", "pose2", "K1", "depth1", "depth2"):
            np.testing.assert_array_equal(a[key], b[key])
        assert a["covis12"] == b["covis12"] and a["covis21"] == b["covis21"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    paths = generate_pairs(folder, 8, seed=1, overlap_min=0.1, overlap_max=0.9, **SMALL)
    return folder, paths


def test_shards_hold_the_requested_pairs_with_consistent_overlap(reference_run):
    _, paths = reference_run
    assert [p.name for p in paths] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    readers = [ShardReader(p) for p in paths]
    assert [len(r) for r in readers] == [3, 3, 2]
    scenes = [s for r in readers for s in r.scene]
    assert scenes == ["synthetic-1-000000"] * 4 + ["synthetic-1-000001"] * 4
    for reader in readers:
        stats = reader.attrs["generation_stats"]
        assert stats["pairs"] == len(reader) and stats["second_attempts"] >= len(reader)
        assert reader.attrs["source"] == "synthetic" and reader.attrs["fov_deg"] == 60.0
        assert reader.attrs["generator_version"] == generate_module.GENERATOR_VERSION
        assert reader.attrs["pair_options"]["min_structure"] == 0.25  # the structure filter is on by default
        assert np.all((reader.overlap >= 0.1) & (reader.overlap <= 0.9))
        for i in range(len(reader)):
            data = reader.read(i, fields=("depth1", "depth2", "K1", "pose1", "pose2", "covis12", "covis21"))
            K = data["K1"]
            np.testing.assert_allclose(K, intrinsics_from_hfov(60.0, 48))
            recomputed = covisibility(data["depth1"], data["depth2"], K, K, data["pose1"], data["pose2"])
            # stored depth is float16: a few boundary pixels may flip
            assert recomputed == pytest.approx((data["covis12"], data["covis21"]), abs=0.02)


def test_generation_is_deterministic_and_independent_of_the_split(reference_run, tmp_path):
    folder, _ = reference_run
    # the same dataset written by two "cluster jobs", the first one with two worker processes
    generate_pairs(
        tmp_path, 8, seed=1, overlap_min=0.1, overlap_max=0.9, num_jobs=2, job_index=0, workers=2, **SMALL
    )
    assert [p.name for p in list_shards(tmp_path)] == ["shard-00000.h5", "shard-00001.h5"]
    generate_pairs(tmp_path, 8, seed=1, overlap_min=0.1, overlap_max=0.9, num_jobs=2, job_index=1, **SMALL)
    _assert_same(_records(folder), _records(tmp_path))


def test_other_seed_gives_other_pairs(reference_run, tmp_path):
    folder, _ = reference_run
    generate_pairs(tmp_path, 3, seed=2, overlap_min=0.1, overlap_max=0.9, **SMALL)
    first = _records(folder)[0]
    other = _records(tmp_path)[0]
    assert other["scene"] == "synthetic-2-000000" and other["encoded"] != first["encoded"]


def test_resume_keeps_finished_shards_and_refuses_other_settings(reference_run, tmp_path, capsys):
    folder, _ = reference_run
    generate_pairs(tmp_path, 8, seed=1, overlap_min=0.1, overlap_max=0.9, **SMALL)
    kept = tmp_path / "shard-00000.h5"
    before = kept.stat().st_mtime_ns
    (tmp_path / "shard-00001.h5").unlink()  # an interrupted run: one shard missing, a temp file left behind
    stale = tmp_path / "shard-00001.h5.tmp-99999"
    stale.write_bytes(b"half a shard")
    capsys.readouterr()
    generate_pairs(tmp_path, 8, seed=1, overlap_min=0.1, overlap_max=0.9, **SMALL)
    printed = capsys.readouterr().out
    assert (
        "2 finished and kept, 1 to write" in printed and "removed 1 stale" in printed and "pairs/s" in printed
    )
    assert kept.stat().st_mtime_ns == before and not stale.exists()
    _assert_same(_records(folder), _records(tmp_path))
    with pytest.raises(ValueError, match=r"shard-00000.h5: existing shard has seed=1, this run wants 3"):
        generate_pairs(tmp_path, 8, seed=3, overlap_min=0.1, overlap_max=0.9, **SMALL)
    # settings that change which pairs come out or how they are encoded are compared too
    with pytest.raises(ValueError, match=r"existing shard has pair_options=.*max_second_attempts"):
        generate_pairs(
            tmp_path, 8, seed=1, overlap_min=0.1, overlap_max=0.9, **{**SMALL, "max_second_attempts": 7}
        )
    with pytest.raises(ValueError, match=r"existing shard has jpeg_quality=95, this run wants 80"):
        generate_pairs(tmp_path, 8, seed=1, overlap_min=0.1, overlap_max=0.9, **{**SMALL, "jpeg_quality": 80})


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="pairs must be a positive integer"):
        generate_pairs(tmp_path, 0)
    with pytest.raises(ValueError, match="task must be one of"):
        generate_pairs(tmp_path, 2, task="segmentation")
    with pytest.raises(ValueError, match="overlap range"):
        generate_pairs(tmp_path, 2, overlap_min=0.8, overlap_max=0.2)
    with pytest.raises(ValueError, match="job_index"):
        generate_pairs(tmp_path, 2, num_jobs=2, job_index=2)
    from croco.synth.habitat import HABITAT_AVAILABLE

    if not HABITAT_AVAILABLE:
        with pytest.raises(ImportError, match="habitat-sim"):
            generate_pairs(tmp_path, 2, renderer="habitat", habitat_scenes=["scene.glb"])


def test_stereo_shards_are_rectified_with_exact_disparity(tmp_path):
    (path,) = generate_pairs(tmp_path, 3, seed=4, task="stereo", **SMALL)
    reader = ShardReader(path)
    assert {"disparity", "disparity_valid", "semantics1", "semantics2", "depth1"} <= set(reader.fields)
    for i in range(len(reader)):
        data = reader.read(i, fields=reader.fields)
        pose1, pose2, K = data["pose1"], data["pose2"], data["K1"]
        np.testing.assert_allclose(pose1[:3, :3], pose2[:3, :3])  # same orientation
        offset = pose1[:3, :3].T @ (pose2[:3, 3] - pose1[:3, 3])  # in the left camera's frame
        baseline = offset[0]
        assert 0.05 <= baseline <= 0.3 and np.allclose(offset[1:], 0.0, atol=1e-9)
        depth = data["depth1"]
        valid = depth > 0
        np.testing.assert_allclose(data["disparity"][valid], K[0, 0] * baseline / depth[valid], rtol=2e-3)
        assert not data["disparity_valid"][~valid].any() and data["disparity_valid"].mean() > 0.5
        assert data["semantics1"].dtype == np.uint8 and data["semantics1"].max() < len(SURFACE_CLASSES)


def test_flow_shards_match_the_reprojection_of_their_depth(tmp_path):
    (path,) = generate_pairs(tmp_path, 2, seed=5, task="flow", **SMALL)
    reader = ShardReader(path)
    for i in range(len(reader)):
        data = reader.read(i, fields=reader.fields)
        K = data["K1"]
        flow, valid = optical_flow(data["depth1"], data["depth2"], K, K, data["pose1"], data["pose2"])
        stored_valid = data["flow_valid"]
        assert (stored_valid == valid).mean() > 0.98  # recomputed from float16 depth
        both = stored_valid & valid
        np.testing.assert_allclose(data["flow"][both], flow[both], atol=0.05)
        assert stored_valid.mean() == pytest.approx(data["covis12"], abs=1e-6)
        assert np.abs(data["flow"][both]).max() > 0.5  # the camera moved


def test_depth_task_carries_depth_and_surface_classes(tmp_path):
    (path,) = generate_pairs(tmp_path, 2, seed=6, task="depth", **SMALL)
    reader = ShardReader(path)
    data = reader.read(0, fields=("depth1", "depth2", "semantics1", "semantics2"))
    assert (data["depth1"] > 0).all() and data["semantics1"].shape == (48, 48)
    assert len(np.unique(data["semantics1"])) >= 2
    assert reader.attrs["surface_classes"] == list(SURFACE_CLASSES)  # names of the class values


def test_hydra_app_runs_with_the_documented_command_line(tmp_path):
    command = [
        sys.executable,
        str(REPO_ROOT / "generate.py"),
        "source=synthetic",
        "out=data/synthetic",
        "pairs=2",
        "seed=3",
        "resolution=32",
        "pairs_per_shard=2",
        "progress=false",
        f"hydra.run.dir={tmp_path}/run",
    ]
    result = subprocess.run(
        command,
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pairs/s" in result.stdout
    (shard,) = list_shards(tmp_path / "data" / "synthetic")  # `out` resolved against the launch folder
    assert len(ShardReader(shard)) == 2
    bad = subprocess.run(
        command[:2] + ["source=nowhere"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "source=nowhere: unknown source option" in bad.stderr


def test_screening_subsamples_the_reference_exactly():
    """The reference's screening view is its full-resolution depth subsampled with a matching K: identical to
    rendering that K directly, so screening needs no extra render of the reference."""
    from croco.synth.render import CpuRenderer
    from croco.synth.room import build_synthetic_scene
    from croco.synth.sampler import subsample_view
    from croco.synth.viewpoints import SamplingRules, sample_reference_pose

    scene = build_synthetic_scene(1, 0)
    K = intrinsics_from_hfov(60.0, 96)
    _, pose = sample_reference_pose(scene, np.random.default_rng(0), SamplingRules())
    full = CpuRenderer(96, semantics=False).render(scene, K, pose)
    depth, small_K = subsample_view(full.depth, K, 4, 4)
    direct = CpuRenderer(24, semantics=False).render(scene, small_K, pose)
    np.testing.assert_allclose(depth, direct.depth, rtol=1e-6)
    assert small_K[0, 0] == pytest.approx(K[0, 0] / 4)


def test_habitat_scene_patterns_expand_or_fail_clearly(tmp_path):
    from croco.synth.pipeline import expand_scene_paths

    for name in ("b.glb", "a.glb"):
        (tmp_path / "scenes" / name.split(".")[0]).mkdir(parents=True)
        (tmp_path / "scenes" / name.split(".")[0] / name).write_bytes(b"")
    found = expand_scene_paths([str(tmp_path / "scenes" / "**" / "*.glb")])
    assert [Path(p).name for p in found] == ["a.glb", "b.glb"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_scene_paths([str(tmp_path / "none" / "*.glb")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_scene_paths([str(tmp_path / "missing.glb")])
    with pytest.raises(ValueError, match="needs habitat_scenes"):
        expand_scene_paths([])
