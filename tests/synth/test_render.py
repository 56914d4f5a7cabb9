"""CPU renderer (exact depth of boxes, cylinders and ellipsoids, classes, texture, view-independent shading
and the optional highlight), scenes, textures (aperiodic patterns, the macro layer), habitat."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from croco.geometry.cameras import intrinsics_from_hfov, look_at, make_pose, unproject_depth
from croco.geometry.covisibility import reproject, visible_in_other
from croco.synth.habitat import (
    HABITAT_AVAILABLE,
    OPENCV_TO_HABITAT,
    HabitatRenderer,
    habitat_camera_state,
    quaternion_to_rotation,
    require_habitat,
    rotation_to_quaternion,
    scene_id_from_path,
)
from croco.synth.render import CpuRenderer, Renderer, Rendering
from croco.synth.room import build_synthetic_scene
from croco.synth.scene import CLASS_ID, SHAPE_ID, SURFACE_CLASSES, Material, Scene, simple_scene
from croco.synth.textures import (
    TEXTURE_KINDS,
    TextureAtlas,
    TextureBank,
    macro_field,
    mipmaps,
    running_layout,
    spectral_noise,
)
from croco.synth.viewpoints import SamplingRules, sample_reference_pose

SIZE = 96
K = intrinsics_from_hfov(60.0, SIZE)


@pytest.fixture(scope="module")
def room():
    return build_synthetic_scene(0, 1)


def distance_to_primitives(points: np.ndarray, scene) -> np.ndarray:
    """(N,) distance from points to the nearest primitive surface (in their yawed frames): exact for boxes and
    cylinder caps, first order |f| / |grad f| for the quadrics (exact at 0, which is what is checked)."""
    best = np.full(len(points), np.inf)
    for centre, half, yaw, shape in zip(scene.centres, scene.halves, scene.yaws, scene.shapes):
        c, s = math.cos(yaw), math.sin(yaw)
        rel = points - centre
        local = np.stack([c * rel[:, 0] - s * rel[:, 2], rel[:, 1], s * rel[:, 0] + c * rel[:, 2]], axis=1)
        if shape == SHAPE_ID["box"]:
            outside = np.linalg.norm(np.maximum(np.abs(local) - half, 0.0), axis=1)
            inside = np.minimum(0.0, np.max(np.abs(local) - half, axis=1))
            distance = np.abs(outside + inside)
        else:
            axes = [0, 2] if shape == SHAPE_ID["cylinder"] else [0, 1, 2]
            f = np.sum((local[:, axes] / half[axes]) ** 2, axis=1) - 1.0
            gradient = np.linalg.norm(2.0 * local[:, axes] / half[axes] ** 2, axis=1)
            distance = np.abs(f) / np.maximum(gradient, 1e-12)
            if shape == SHAPE_ID["cylinder"]:
                distance = np.where(np.abs(local[:, 1]) <= half[1] + 1e-4, distance, np.inf)
                cap = np.abs(np.abs(local[:, 1]) - half[1])
                distance = np.minimum(distance, np.where(f <= 1e-3, cap, np.inf))
        best = np.minimum(best, distance)
    return best


def test_every_pixel_lies_on_a_surface_and_carries_its_class(room):
    renderer = CpuRenderer(SIZE)
    rng = np.random.default_rng(0)
    for _ in range(4):
        _, pose = sample_reference_pose(room, rng, SamplingRules())
        view = renderer.render(room, K, pose)
        assert view.rgb.shape == (SIZE, SIZE, 3) and view.rgb.dtype == np.uint8
        assert view.depth.dtype == np.float32 and (view.depth > 0).all()  # closed rooms: all depth valid
        points = unproject_depth(view.depth, K, pose).reshape(-1, 3)
        to_room = np.min(np.concatenate([points, room.size - points], axis=1), axis=1)
        to_surface = np.minimum(to_room, distance_to_primitives(points, room))
        assert np.percentile(to_surface, 99.5) < 1e-3  # metric depth is exact (float32)
        classes = view.semantics.reshape(-1)
        floor = classes == CLASS_ID["floor"]
        np.testing.assert_allclose(points[floor, 1], 0.0, atol=1e-3)
        ceiling = classes == CLASS_ID["ceiling"]
        np.testing.assert_allclose(points[ceiling, 1], room.size[1], atol=1e-3)
        assert classes.max() < len(SURFACE_CLASSES) and (classes > 0).all()


def test_rooms_hold_curved_primitives_doors_windows_and_plants(room):
    shapes = {int(shape) for shape in room.shapes}
    assert {SHAPE_ID["box"], SHAPE_ID["cylinder"], SHAPE_ID["ellipsoid"]} <= shapes
    classes = set()
    for index in range(6):
        classes |= {SURFACE_CLASSES[c] for c in build_synthetic_scene(0, index).box_semantics}
    assert {"door", "window", "plant", "picture", "clutter"} <= classes


def test_curved_primitives_have_exact_depth_normals_and_classes():
    """A sphere and a cylinder in front of the camera: every pixel on them lies on the analytic surface to
    float32 precision, the centre pixel of the sphere has the hand-computed depth, and the per-pixel normals
    are the analytic ones (what the lighting uses)."""
    sphere_centre, radius = np.array([3.6, 1.5, 4.0]), 0.5
    cylinder_centre, cylinder_half = np.array([2.0, 1.0, 5.0]), np.array([0.35, 1.0, 0.2])
    scene = simple_scene(
        (6.0, 3.0, 8.0),
        [
            (tuple(sphere_centre), (radius,) * 3, 0.0, "ellipsoid"),
            (tuple(cylinder_centre), tuple(cylinder_half), 0.6, "cylinder"),
        ],
    )
    eye = np.array([3.6, 1.5, 1.0])
    pose = make_pose(look_at(eye, sphere_centre), eye)
    view = CpuRenderer(SIZE).render(scene, K, pose)
    points = unproject_depth(view.depth, K, pose).reshape(-1, 3)
    on_sphere = np.abs(np.linalg.norm(points - sphere_centre, axis=1) - radius) < 1e-3
    assert on_sphere.sum() > 200
    np.testing.assert_allclose(np.linalg.norm(points[on_sphere] - sphere_centre, axis=1), radius, atol=2e-6)
    # pixel (row 47, column 47) by hand: its ray through the centre (47.5, 47.5) meets |e + t d - c| = r
    row = col = SIZE // 2 - 1
    ray = pose[:3, :3] @ np.linalg.solve(K, [col + 0.5, row + 0.5, 1.0])  # camera z = 1: t is the depth
    offset = eye - sphere_centre
    b, c = ray @ offset, offset @ offset - radius**2
    expected = (-b - math.sqrt(b * b - (ray @ ray) * c)) / (ray @ ray)
    assert view.depth[row, col] == pytest.approx(expected, rel=1e-6)
    to_surface = distance_to_primitives(points, scene)
    clutter = view.semantics.reshape(-1) == CLASS_ID["clutter"]
    assert clutter.sum() > on_sphere.sum()  # the cylinder is seen too
    assert to_surface[clutter].max() < 2e-5
    # normals: the renderer's per-pixel normals on the sphere are (p - c) / r
    from croco.synth.render import face_table

    table = face_table(scene).astype(np.float32)
    faces = np.full(int(on_sphere.sum()), 6, dtype=np.int64)  # face slot 0 of primitive 0
    column = {name: np.zeros(len(faces), dtype=np.float32) for name in ("nx", "ny", "nz")}
    u, v = np.zeros(len(faces), np.float32), np.zeros(len(faces), np.float32)
    hits = points[on_sphere].astype(np.float32)
    CpuRenderer._curved_surfaces(scene, table, faces, (hits[:, 0], hits[:, 1], hits[:, 2]), column, u, v)
    normals = np.stack([column["nx"], column["ny"], column["nz"]], axis=1)
    np.testing.assert_allclose(normals, (points[on_sphere] - sphere_centre) / radius, atol=1e-4)


def test_yawed_box_depth_matches_a_hand_computed_intersection():
    yaw = 0.5
    centre, half = np.array([3.0, 1.5, 4.0]), np.array([0.6, 0.5, 0.3])
    scene = simple_scene((6.0, 3.0, 8.0), [(tuple(centre), tuple(half), yaw)])
    eye = np.array([3.0, 1.5, 1.0])
    pose = make_pose(look_at(eye, centre), eye)
    view = CpuRenderer(SIZE).render(scene, K, pose)
    # the centre pixel's ray points at the box centre: it enters through the face nearest the camera, whose
    # outward normal (yawed -z axis) is n = (-sin yaw, 0, -cos yaw) and which lies half[2] from the centre
    normal = np.array([-math.sin(yaw), 0.0, -math.cos(yaw)])
    ray = (centre - eye) / np.linalg.norm(centre - eye)
    t = (normal @ (centre + half[2] * normal - eye)) / (normal @ ray)
    expected_depth = (t * ray) @ pose[:3, 2]
    centre_depths = view.depth[SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2 - 1 : SIZE // 2 + 1]
    np.testing.assert_allclose(centre_depths, expected_depth, rtol=5e-3)
    assert view.semantics[SIZE // 2, SIZE // 2] == CLASS_ID["clutter"]
    assert view.semantics[2, 2] in (CLASS_ID["wall"], CLASS_ID["ceiling"])


def test_images_are_textured_not_flat(room):
    renderer = CpuRenderer(SIZE)
    rng = np.random.default_rng(1)
    contrast, fine = [], []
    for _ in range(8):
        _, pose = sample_reference_pose(room, rng, SamplingRules())
        grey = renderer.render(room, K, pose).rgb.astype(np.float32).mean(axis=2)
        contrast.append(grey.std())
        fine.append(np.median(np.abs(np.diff(grey, axis=1))))  # texture everywhere, not just at edges
    assert np.median(contrast) > 8.0 and np.median(fine) > 0.5


def test_shading_is_view_independent(room):
    """The same surface point has (nearly) the same colour in both views of a pair: what makes cross-view
    completion possible."""
    renderer = CpuRenderer(SIZE)
    rng = np.random.default_rng(2)
    differences = []
    while len(differences) < 3:
        _, pose1 = sample_reference_pose(room, rng, SamplingRules())
        pose2 = pose1.copy()
        pose2[:3, 3] += pose1[:3, 0] * 0.2  # a small step sideways
        view1, view2 = renderer.render(room, K, pose1), renderer.render(room, K, pose2)
        seen = visible_in_other(view1.depth, view2.depth, K, K, pose1, pose2)
        if seen.mean() < 0.5:
            continue
        uv2, _, _ = reproject(view1.depth, K, pose1, K, pose2)
        cols = np.clip(uv2[..., 0].astype(int), 0, SIZE - 1)[seen]
        rows = np.clip(uv2[..., 1].astype(int), 0, SIZE - 1)[seen]
        colours1 = view1.rgb[seen].astype(int)
        difference = np.median(np.abs(colours1 - view2.rgb[rows, cols].astype(int)))
        shuffled = np.median(np.abs(colours1 - view2.rgb[rows[::-1], cols[::-1]].astype(int)))
        differences.append((difference, shuffled))
    for difference, shuffled in differences:
        assert difference <= 3  # texture resampling only (no view-dependent lighting) ...
    assert (
        np.mean([d for d, _ in differences]) < np.mean([s for _, s in differences]) / 2
    )  # ... not flat images


def test_rendering_and_scenes_are_deterministic():
    scene_a, scene_b = build_synthetic_scene(5, 3), build_synthetic_scene(5, 3)
    np.testing.assert_array_equal(scene_a.centres, scene_b.centres)
    for texture_a, texture_b in zip(scene_a.textures, scene_b.textures):
        np.testing.assert_array_equal(texture_a, texture_b)
    other = build_synthetic_scene(5, 4)
    assert other.scene_id != scene_a.scene_id and not np.array_equal(other.size, scene_a.size)
    pose = make_pose(
        np.eye(3), scene_a.walkable_points[0].tolist()[:1] + [1.5] + scene_a.walkable_points[0].tolist()[1:]
    )
    first, second = (
        CpuRenderer(48).render(scene_a, intrinsics_from_hfov(60, 48), pose),
        CpuRenderer(48).render(scene_b, intrinsics_from_hfov(60, 48), pose),
    )
    np.testing.assert_array_equal(first.rgb, second.rgb)
    np.testing.assert_array_equal(first.depth, second.depth)


def test_walkable_area_is_the_navmesh(room):
    rng = np.random.default_rng(3)
    for _ in range(50):
        point = room.sample_navigable_point(rng)
        assert room.is_navigable(point) and point[1] == 0.0
    far = room.snap_point(np.array([-5.0, 0.0, -5.0]))
    assert room.is_navigable(far)
    inside = room.sample_navigable_point(rng)
    np.testing.assert_allclose(room.snap_point(inside), inside)
    # obstacles are not walkable: the centre of every floor-standing object is excluded
    for centre, obstacle in zip(room.centres, room.obstacles):
        if obstacle:
            assert not room.is_navigable(centre)


def test_renderer_input_errors():
    renderer = CpuRenderer(16)
    scene = simple_scene((4.0, 3.0, 4.0))
    with pytest.raises(TypeError, match="Scene"):
        renderer.render(object(), K, np.eye(4))
    with pytest.raises(ValueError, match="K must be 3x3"):
        renderer.render(scene, K[:2], np.eye(4))
    with pytest.raises(ValueError, match="resolution"):
        CpuRenderer(0)
    assert isinstance(renderer, Renderer)


def test_spectral_noise_has_the_requested_power_law_and_tiles():
    size, alpha = 128, 1.0
    field = spectral_noise(np.random.default_rng(0), size, alpha)
    assert field.min() >= 0.0 and field.max() <= 1.0
    spectrum = np.abs(np.fft.fft2(field - field.mean()))
    freq = np.fft.fftfreq(size) * size
    radius = np.hypot(freq[None, :], freq[:, None])
    bins = np.arange(4, 40)
    amplitude = np.array([spectrum[(radius >= r) & (radius < r + 1)].mean() for r in bins])
    slope = np.polyfit(np.log(bins + 0.5), np.log(amplitude), 1)[0]
    assert slope == pytest.approx(-alpha, abs=0.25)  # tanh squashing bends it a little
    # periodic: the jump across the wrap-around seam is like any neighbouring-pixel difference
    seam = np.abs(field[:, 0] - field[:, -1]).mean()
    interior = np.abs(np.diff(field, axis=1)).mean()
    assert seam < 2.0 * interior


def test_texture_bank_atlas_mips_and_bilinear_sampling():
    bank = TextureBank(seed=0, count=len(TEXTURE_KINDS), size=32)
    assert {p.kind for p in bank.patterns} == set(bank.by_kind) == set(TEXTURE_KINDS)
    assert len(bank.macros) > 0 and bank.macros[0].shape == (32, 32, 3)
    texture = bank.colorize(0, np.random.default_rng(0))
    assert texture.shape == (32, 32, 3) and texture.dtype == np.uint8 and texture.std() > 5
    levels = mipmaps(texture)
    assert [m.shape[0] for m in levels] == [32, 16, 8, 4, 2, 1]
    np.testing.assert_allclose(levels[-1][0, 0], texture.reshape(-1, 3).mean(0), atol=1.0)
    ramp = np.zeros((4, 4, 3), dtype=np.uint8)
    ramp[..., 0] = np.arange(4)[None, :] * 80  # red grows with u
    ramp[..., 1] = 100
    atlas = TextureAtlas([ramp])
    u = np.array([0.5, 1.0, 1.5, 2.25], dtype=np.float32)
    red, green, _ = atlas.sample(
        np.zeros(4, dtype=np.int64), u, np.full(4, 1.5, dtype=np.float32), np.zeros(4, dtype=np.int64)
    )
    np.testing.assert_allclose(red, [0.0, 40.0, 80.0, 140.0], atol=0.5)  # linear between texel centres
    np.testing.assert_allclose(green, 100.0, atol=0.5)
    nearest = atlas.lookup(
        np.zeros(2, dtype=np.int64),
        np.array([1.2, 5.2], dtype=np.float32),
        np.array([0.1, 0.1], dtype=np.float32),
        np.zeros(2, dtype=np.int64),
    )
    np.testing.assert_array_equal(nearest[:, 0], [80, 80])  # u = 5.2 wraps around to texel 1


def _high_pass_peak(field: np.ndarray, exclude: int = 12) -> float:
    """Largest autocorrelation of the field's fine detail at shifts of at least ``exclude`` texels: ~1 for a
    lattice of identical motifs, small for motifs at random places."""
    size = field.shape[0]
    frequency = np.fft.fftfreq(size)
    smooth = np.exp(-2.0 * (np.pi * 6.0) ** 2 * (frequency[None, :] ** 2 + frequency[:, None] ** 2))
    detail = field - np.fft.ifft2(np.fft.fft2(field) * smooth).real
    correlation = np.fft.ifft2(np.abs(np.fft.fft2(detail)) ** 2).real
    correlation /= correlation[0, 0]
    distance = np.minimum(np.arange(size), size - np.arange(size))
    near = (distance[:, None] < exclude) & (distance[None, :] < exclude)
    return float(correlation[~near].max())


def test_patterns_vary_per_element_instead_of_repeating():
    from croco.synth.textures import scatter_motifs, tiles_pattern

    # motifs at random places: no shift maps the pattern onto itself
    for seed in range(4):
        assert _high_pass_peak(scatter_motifs(np.random.default_rng(seed), 128, 60)) < 0.5
    # every tile its own shade and piece of stone: no two tiles alike
    for seed in range(4):
        rng = np.random.default_rng(seed)
        field = tiles_pattern(rng, 128)
        count = next(n for n in (2, 4, 8) if np.all(field[:, 128 // n] >= 0.94) or n == 8)
        side = 128 // count
        tiles = [
            field[
                r * side + side // 4 : (r + 1) * side - side // 4,
                c * side + side // 4 : (c + 1) * side - side // 4,
            ]
            for r in range(count)
            for c in range(count)
        ]
        differences = [np.abs(a - b).mean() for i, a in enumerate(tiles) for b in tiles[i + 1 :]]
        assert min(differences) > 0.01
    # planks and bricks: random lengths, rows that do not line up
    ids, joint_u, _ = running_layout(np.random.default_rng(0), 128, rows=4, per_row=3, jitter=1.0)
    lengths = [np.bincount(ids[row * 32])[row * 3 : row * 3 + 3] for row in range(4)]
    assert (
        len({tuple(sorted(length)) for length in lengths}) == 4 and min(min(length) for length in lengths) > 0
    )
    assert not np.array_equal(joint_u[0] < 1e-2, joint_u[40] < 1e-2)


def test_macro_layer_hides_the_texture_repeats():
    """A wall seen face-on: without the macro layer the image repeats with the texture tile, with it the
    repeats differ."""
    size, side = 64, 0.5  # a 64-texel tile repeated every 0.5 m
    tile = (spectral_noise(np.random.default_rng(0), size, 1.0) * 200 + 30).astype(np.uint8)
    grey = (macro_field(np.random.default_rng(1), size) * 255).astype(np.uint8)
    textures = [np.repeat(tile[..., None], 3, axis=2), np.repeat(grey[..., None], 3, axis=2)]
    K64, shift = intrinsics_from_hfov(60.0, 128), 32  # pixels per tile on the wall ...
    distance = K64[0, 0] * side / shift  # ... exactly, at this distance
    eye = np.array([3.0, 1.5, distance])
    pose = make_pose(look_at(eye, eye - np.array([0.0, 0.0, 1.0])), eye)
    errors = []
    for strength in (0.0, 0.4):
        material = Material(
            0, (size / side, size / side), macro_texture=1, macro_ratio=0.31, macro_strength=strength
        )
        scene = Scene.create("wall", (6.0, 3.0, 6.0), [], [material], textures)
        grey_image = CpuRenderer(128).render(scene, K64, pose).rgb.astype(np.float32).mean(axis=2)
        middle = grey_image[40:88]
        errors.append(np.abs(middle[:, 10 : 10 + 50] - middle[:, 10 + shift : 10 + shift + 50]).mean())
    assert errors[0] < 2.0 and errors[1] > 4.0 * max(errors[0], 0.5)


def test_specular_highlight_is_optional_and_view_dependent():
    scene = build_synthetic_scene(0, 1)
    rng = np.random.default_rng(4)
    _, pose = sample_reference_pose(scene, rng, SamplingRules())
    plain = CpuRenderer(SIZE).render(scene, K, pose)
    shiny = CpuRenderer(SIZE, specular=1.0).render(scene, K, pose)
    np.testing.assert_array_equal(plain.depth, shiny.depth)
    brighter = shiny.rgb.astype(int) - plain.rgb.astype(int)
    assert brighter.min() >= 0 and brighter.max() > 5  # a highlight adds light, somewhere
    with pytest.raises(ValueError, match="specular"):
        CpuRenderer(16, specular=-1.0)


# --------------------------------------------------------------------------------------------- habitat


def test_habitat_pose_conversion_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, pose = sample_reference_pose(simple_scene((8.0, 3.0, 8.0)), rng, SamplingRules())
        position, quaternion = habitat_camera_state(pose)
        np.testing.assert_allclose(position, pose[:3, 3])
        habitat_rotation = quaternion_to_rotation(*quaternion)
        # Habitat cameras look along their -z axis: the same world direction as OpenCV's +z
        np.testing.assert_allclose(habitat_rotation @ [0, 0, -1], pose[:3, 2], atol=1e-9)
        np.testing.assert_allclose(habitat_rotation @ [0, 1, 0], -pose[:3, 1], atol=1e-9)
        np.testing.assert_allclose(habitat_rotation @ OPENCV_TO_HABITAT, pose[:3, :3], atol=1e-9)
        np.testing.assert_allclose(
            quaternion_to_rotation(*rotation_to_quaternion(pose[:3, :3])), pose[:3, :3], atol=1e-9
        )
    assert scene_id_from_path("/data/hm3d/val/00800-TEEsavR23oF/TEEsavR23oF.basis.glb") == "TEEsavR23oF"


@pytest.mark.skipif(HABITAT_AVAILABLE, reason="checks the error shown when habitat-sim is missing")
def test_missing_habitat_gives_an_install_hint():
    with pytest.raises(ImportError, match="habitat-sim"):
        require_habitat()
    with pytest.raises(ImportError, match="conda install habitat-sim"):
        HabitatRenderer((64, 64))


HABITAT_TEST_SCENE = os.environ.get(
    "CROCO_HABITAT_TEST_SCENE",
    "data/habitat-sim-data/scene_datasets/habitat-test-scenes/skokloster-castle.glb",
)


@pytest.mark.skipif(
    not HABITAT_AVAILABLE or not os.path.exists(HABITAT_TEST_SCENE),
    reason="habitat-sim is not installed here (conda-only) or its test scene is missing; the sampling, "
    "co-visibility and shard logic it plugs into is tested with the CPU renderer and a fake renderer",
)
def test_habitat_renderer_renders_a_test_scene():  # pragma: no cover - needs habitat-sim
    renderer = HabitatRenderer((64, 64), 60.0)
    scene = renderer.load_scene(HABITAT_TEST_SCENE)
    rng = np.random.default_rng(0)
    _, pose = sample_reference_pose(scene, rng, SamplingRules())
    view = renderer.render(scene, intrinsics_from_hfov(60.0, 64), pose)
    assert isinstance(view, Rendering) and view.rgb.shape == (64, 64, 3) and view.depth.shape == (64, 64)
    assert (view.depth > 0).mean() > 0.5
    renderer.close()
