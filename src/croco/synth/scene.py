"""The scene container of the procedural world: a room, its boxes, materials, lights and walkable area.

World frame (see ``croco.geometry.cameras``): y up, metres; a room spans [0, Lx] x [0, Ly] x [0, Lz], floor at
y = 0, ceiling at y = Ly. Everything else is a primitive given by its bounding box (centre, half extents, yaw
about y) and a shape: the box itself, the vertical elliptic cylinder inscribed in it, or the inscribed
ellipsoid (``SHAPES``); all three have closed-form ray intersections, so depth stays exact.
``croco.synth.room`` and ``croco.synth.furniture`` decide where primitives go. Each carries a material (a
texture of ``croco.synth.textures`` with a texel density and offset, a macro layer that hides the texture's
repeats, a gloss) and a surface class, so renders come with per-pixel semantics.

The walkable area (floor minus object footprints grown by a margin, and a margin to the walls) plays the role
of Habitat's navmesh: ``sample_navigable_point`` / ``snap_point`` / ``is_navigable`` implement
``croco.synth.viewpoints.NavigableScene``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from croco.synth.textures import TextureAtlas, spectral_noise

SURFACE_CLASSES: tuple[str, ...] = (
    "void",
    "floor",
    "wall",
    "ceiling",
    "table",
    "chair",
    "cabinet",
    "shelf",
    "bed",
    "sofa",
    "lamp",
    "picture",
    "rug",
    "clutter",
    "door",
    "window",
    "curtain",
    "plant",
    "fixture",
)
"""Per-pixel surface classes of the semantics maps (uint8 index into this tuple; 0 = nothing hit). New classes
are appended, so the ids of the older ones never change."""
CLASS_ID: dict[str, int] = {name: index for index, name in enumerate(SURFACE_CLASSES)}
BARE_CLASSES: tuple[str, ...] = ("void", "floor", "wall", "ceiling")
"""Classes of the bare room (what a view must not be almost only made of: ``PairOptions.min_structure``)."""
BARE_CLASS_IDS = np.array([CLASS_ID[name] for name in BARE_CLASSES], dtype=np.uint8)

SHAPES: tuple[str, ...] = ("box", "cylinder", "ellipsoid")
"""Primitive shapes, each inscribed in its (yawed) bounding box: the box, the vertical elliptic cylinder with
the box's height and its x/z half extents as radii, the ellipsoid with the half extents as semi-axes."""
SHAPE_ID: dict[str, int] = {name: index for index, name in enumerate(SHAPES)}

WALL_MARGIN = 0.35
"""Cameras stay this far from walls (m)."""
OBSTACLE_MARGIN = 0.3
"""Cameras stay this far from obstacle footprints (m)."""
NAV_CELL = 0.05
"""Resolution of the walkable grid used to sample and snap points (m)."""
FLOOR_SHADE_CELL = 0.04
"""Resolution of the floor contact-shadow map (m); the renderer looks it up at the same resolution."""
MAX_SCENE_TEXTURES = 16
"""Distinct textures per generated room (materials beyond that reuse them with their own scale and offset)."""


@dataclass
class Material:
    """A texture of the scene atlas and how it is laid on a surface (texels/metre along u and v, offset).

    The macro layer multiplies the albedo by ``1 + strength * (2 m - 1) * tint`` where ``m`` is the grey atlas
    texture ``macro_texture`` read at ``macro_ratio`` times the texel coordinates plus ``macro_offset``: an
    incommensurate ratio makes every repeat of the main texture look different. ``gloss`` scales the optional
    specular highlight (``CpuRenderer(specular=...)``).
    """

    texture: int
    texels_per_metre: tuple[float, float]
    offset: tuple[float, float] = (0.0, 0.0)
    macro_texture: int = -1
    macro_ratio: float = 0.35
    macro_offset: tuple[float, float] = (0.0, 0.0)
    macro_strength: float = 0.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gloss: float = 0.0


@dataclass
class Box:
    """An oriented primitive: centre (3,), half extents (3,) of its bounding box, yaw (rad) about the y axis,
    material and class ids, and its shape (``SHAPE_ID``: box, cylinder or ellipsoid inscribed in the box)."""

    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0
    material: int = 0
    semantic: int = CLASS_ID["clutter"]
    obstacle: bool = True
    shadow: float = 0.5
    """Strength of the contact shadow this box casts on the floor (0 for none); only obstacles cast one."""
    shape: int = 0


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about y (local -> world)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class Scene:
    """A room, its boxes, materials/textures, lights and walkable area. Build with ``Scene.create`` or
    ``build_synthetic_scene``."""

    scene_id: str
    size: np.ndarray
    room_materials: np.ndarray
    """(6,) material of the room faces in the order -x, +x, floor (-y), ceiling (+y), -z, +z."""
    centres: np.ndarray
    halves: np.ndarray
    yaws: np.ndarray
    box_materials: np.ndarray
    box_semantics: np.ndarray
    obstacles: np.ndarray
    shadows: np.ndarray
    material_textures: np.ndarray
    material_density: np.ndarray
    material_offset: np.ndarray
    shapes: np.ndarray
    material_macro: np.ndarray
    """(M, 7) float32 per material: macro texture (-1: none), ratio, offset u, v, strength, gloss, 0."""
    material_tint: np.ndarray
    textures: list[np.ndarray]
    light_positions: np.ndarray
    light_colours: np.ndarray
    ambient: float
    exposure: float
    walkable_mask: np.ndarray = field(repr=False)
    walkable_points: np.ndarray = field(repr=False)
    floor_shade: np.ndarray = field(repr=False)
    _atlas: TextureAtlas | None = field(default=None, repr=False)
    cache: dict = field(default_factory=dict, repr=False)
    """Derived per-scene data that renderers keep between views (e.g. the CPU renderer's face table)."""

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        scene_id: str,
        size: tuple[float, float, float],
        boxes: list[Box],
        materials: list[Material],
        textures: list[np.ndarray],
        *,
        room_materials: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0),
        lights: list[tuple[tuple[float, float, float], tuple[float, float, float]]] | None = None,
        ambient: float = 0.4,
        exposure: float = 1.0,
    ) -> Scene:
        """Assemble a scene from explicit parts (used by the generator and by tests with known geometry)."""
        size_array = np.asarray(size, dtype=np.float64)
        if size_array.shape != (3,) or np.any(size_array <= 0):
            raise ValueError(f"scene {scene_id}: room size must be three positive lengths, got {size}")
        if not materials or not textures:
            raise ValueError(f"scene {scene_id}: needs at least one material and one texture")
        for material in materials:
            if not 0 <= material.texture < len(textures) or not -1 <= material.macro_texture < len(textures):
                raise ValueError(f"scene {scene_id}: material texture {material.texture} out of range")
        count = len(boxes)
        for box in boxes:
            if (
                not 0 <= box.material < len(materials)
                or min(box.half) <= 0
                or not 0 <= box.shape < len(SHAPES)
            ):
                raise ValueError(
                    f"scene {scene_id}: bad box {box} (material index / positive half extents / shape)"
                )
        if any(not 0 <= m < len(materials) for m in room_materials):
            raise ValueError(f"scene {scene_id}: room material out of range: {room_materials}")
        if lights is None:
            lights = [((size[0] / 2, size[1] - 0.05, size[2] / 2), (1.0, 1.0, 1.0))]
        scene = cls(
            scene_id=scene_id,
            size=size_array,
            room_materials=np.asarray(room_materials, dtype=np.int64),
            centres=np.asarray([b.centre for b in boxes], dtype=np.float64).reshape(count, 3),
            halves=np.asarray([b.half for b in boxes], dtype=np.float64).reshape(count, 3),
            yaws=np.asarray([b.yaw for b in boxes], dtype=np.float64).reshape(count),
            box_materials=np.asarray([b.material for b in boxes], dtype=np.int64).reshape(count),
            box_semantics=np.asarray([b.semantic for b in boxes], dtype=np.uint8).reshape(count),
            obstacles=np.asarray([b.obstacle for b in boxes], dtype=bool).reshape(count),
            shadows=np.asarray([b.shadow if b.obstacle else 0.0 for b in boxes], dtype=np.float64).reshape(
                count
            ),
            material_textures=np.asarray([m.texture for m in materials], dtype=np.int64),
            material_density=np.asarray([m.texels_per_metre for m in materials], dtype=np.float32),
            material_offset=np.asarray([m.offset for m in materials], dtype=np.float32),
            shapes=np.asarray([b.shape for b in boxes], dtype=np.int64).reshape(count),
            material_macro=np.asarray(
                [
                    (m.macro_texture, m.macro_ratio, *m.macro_offset, m.macro_strength, m.gloss, 0.0)
                    for m in materials
                ],
                dtype=np.float32,
            ),
            material_tint=np.asarray([m.tint for m in materials], dtype=np.float32),
            textures=textures,
            light_positions=np.asarray([p for p, _ in lights], dtype=np.float64).reshape(-1, 3),
            light_colours=np.asarray([c for _, c in lights], dtype=np.float64).reshape(-1, 3),
            ambient=float(ambient),
            exposure=float(exposure),
            walkable_mask=np.zeros((0, 0), dtype=bool),
            walkable_points=np.zeros((0, 2)),
            floor_shade=np.ones((1, 1), dtype=np.float32),
        )
        scene._build_walkable_grid()
        scene._build_floor_shade()
        return scene

    @property
    def atlas(self) -> TextureAtlas:
        """Mip-mapped atlas of the scene's textures (built on first use, then kept)."""
        if self._atlas is None:
            self._atlas = TextureAtlas(self.textures)
        return self._atlas

    @property
    def box_count(self) -> int:
        return int(self.centres.shape[0])

    # -- footprints and the walkable area -----------------------------------------------------------------

    def _footprint_distance(self, points_xz: np.ndarray, which: np.ndarray) -> np.ndarray:
        """(N, B') distance in the floor plane from points to the selected boxes' footprints (0 inside).

        Round footprints (cylinders, ellipsoids) use (ρ - 1) min(a, b) with ρ the elliptic radius: exact for
        circles and never more than the true distance for ellipses, so keep-out margins stay conservative.
        """
        centres = self.centres[which][:, [0, 2]]
        halves = self.halves[which][:, [0, 2]]
        yaws = self.yaws[which]
        round_ = self.shapes[which] != SHAPE_ID["box"]
        offset = points_xz[:, None, :] - centres[None, :, :]
        c, s = np.cos(yaws)[None, :], np.sin(yaws)[None, :]
        # world -> local for a yaw about y: x_l = c*x - s*z, z_l = s*x + c*z
        local_x = c * offset[..., 0] - s * offset[..., 1]
        local_z = s * offset[..., 0] + c * offset[..., 1]
        outside_x = np.maximum(np.abs(local_x) - halves[None, :, 0], 0.0)
        outside_z = np.maximum(np.abs(local_z) - halves[None, :, 1], 0.0)
        distance = np.hypot(outside_x, outside_z)
        if np.any(round_):
            rho = np.hypot(local_x / halves[None, :, 0], local_z / halves[None, :, 1])
            elliptic = np.maximum(rho - 1.0, 0.0) * np.min(halves, axis=1)[None, :]
            distance = np.where(round_[None, :], elliptic, distance)
        return distance

    def navigable_mask(self, points_xz: np.ndarray) -> np.ndarray:
        """(N,) bool: points (x, z) at least WALL_MARGIN from walls and OBSTACLE_MARGIN from obstacles."""
        points_xz = np.asarray(points_xz, dtype=np.float64).reshape(-1, 2)
        inside = (
            (points_xz[:, 0] >= WALL_MARGIN)
            & (points_xz[:, 0] <= self.size[0] - WALL_MARGIN)
            & (points_xz[:, 1] >= WALL_MARGIN)
            & (points_xz[:, 1] <= self.size[2] - WALL_MARGIN)
        )
        if np.any(self.obstacles):
            distance = self._footprint_distance(points_xz, self.obstacles)
            inside &= np.all(distance > OBSTACLE_MARGIN, axis=1)
        return inside

    def _grid(self, cell: float) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates (xs, zs) of a floor grid with cells of about ``cell`` metres."""
        columns = max(1, round(self.size[0] / cell))
        rows = max(1, round(self.size[2] / cell))
        return (np.arange(columns) + 0.5) * (self.size[0] / columns), (np.arange(rows) + 0.5) * (
            self.size[2] / rows
        )

    def _near_footprint(self, box: int, xs: np.ndarray, zs: np.ndarray, reach: float):
        """(row slice, column slice, distances) for the grid cells within ``reach`` of one box's bounding
        square (only those can be affected, so grids cost O(cells near objects) rather than O(cells x
        objects))."""
        radius = float(np.hypot(self.halves[box, 0], self.halves[box, 2])) + reach
        cx, cz = self.centres[box, 0], self.centres[box, 2]
        columns = slice(int(np.searchsorted(xs, cx - radius)), int(np.searchsorted(xs, cx + radius)))
        rows = slice(int(np.searchsorted(zs, cz - radius)), int(np.searchsorted(zs, cz + radius)))
        grid = np.stack(np.meshgrid(xs[columns], zs[rows]), axis=-1).reshape(-1, 2)
        selected = np.zeros(self.box_count, dtype=bool)
        selected[box] = True
        distance = self._footprint_distance(grid, selected)[:, 0]
        return rows, columns, distance.reshape(rows.stop - rows.start, columns.stop - columns.start)

    def _build_walkable_grid(self) -> None:
        xs, zs = self._grid(NAV_CELL)
        mask = (
            (xs[None, :] >= WALL_MARGIN)
            & (xs[None, :] <= self.size[0] - WALL_MARGIN)
            & (zs[:, None] >= WALL_MARGIN)
            & (zs[:, None] <= self.size[2] - WALL_MARGIN)
        )
        for box in np.flatnonzero(self.obstacles):
            rows, columns, distance = self._near_footprint(box, xs, zs, OBSTACLE_MARGIN)
            mask[rows, columns] &= distance > OBSTACLE_MARGIN
        self.walkable_mask = mask
        grid = np.stack(np.meshgrid(xs, zs), axis=-1)
        self.walkable_points = grid[mask]

    def _build_floor_shade(self) -> None:
        """Ambient-occlusion-like darkening of the floor around and under obstacles (soft contact shadows)."""
        xs, zs = self._grid(FLOOR_SHADE_CELL)
        shade = np.ones((len(zs), len(xs)))
        for box in np.flatnonzero(self.shadows > 0):
            rows, columns, distance = self._near_footprint(box, xs, zs, 0.6)
            shade[rows, columns] *= 1.0 - self.shadows[box] * np.exp(-distance / 0.12)
        self.floor_shade = shade.astype(np.float32)

    @property
    def walkable_fraction(self) -> float:
        return float(self.walkable_mask.mean()) if self.walkable_mask.size else 0.0

    # -- NavigableScene -----------------------------------------------------------------------------------

    def is_navigable(self, point: np.ndarray) -> bool:
        point = np.asarray(point, dtype=np.float64)
        return bool(self.navigable_mask(point[[0, 2]][None, :])[0])

    def sample_navigable_point(self, rng: np.random.Generator) -> np.ndarray:
        if len(self.walkable_points) == 0:
            raise ValueError(f"scene {self.scene_id}: no walkable area to sample a camera position from")
        index = int(rng.integers(len(self.walkable_points)))
        jitter = rng.uniform(-0.5 * NAV_CELL, 0.5 * NAV_CELL, size=2)
        x, z = self.walkable_points[index] + jitter
        if not self.navigable_mask(np.array([[x, z]]))[0]:
            x, z = self.walkable_points[index]
        return np.array([x, 0.0, z])

    def snap_point(self, point: np.ndarray) -> np.ndarray:
        point = np.asarray(point, dtype=np.float64)
        if len(self.walkable_points) == 0 or not np.all(np.isfinite(point)):
            return np.full(3, np.nan)
        xz = point[[0, 2]]
        if self.navigable_mask(xz[None, :])[0]:
            return np.array([xz[0], 0.0, xz[1]])
        nearest = self.walkable_points[np.argmin(np.sum((self.walkable_points - xz) ** 2, axis=1))]
        return np.array([nearest[0], 0.0, nearest[1]])


def simple_scene(
    size: tuple[float, float, float],
    boxes: list[tuple] = (),  # type: ignore[assignment]
    *,
    scene_id: str = "simple",
    seed: int = 0,
    texture_size: int = 64,
) -> Scene:
    """A room with explicitly placed primitives ((centre, half extents, yaw[, shape name]) each), all sharing
    one noise texture.

    For checks against known geometry (a camera facing a wall, an occluder in between) and for examples; the
    generator uses ``build_synthetic_scene``.
    """
    rng = np.random.default_rng(seed)
    grey = (spectral_noise(rng, texture_size, alpha=1.0) * 200 + 30).astype(np.uint8)
    texture = np.repeat(grey[..., None], 3, axis=2)
    density = texture_size / 1.0  # one texture tile per metre
    box_list = [
        Box(
            tuple(b[0]),
            tuple(b[1]),
            float(b[2]),
            0,
            CLASS_ID["clutter"],
            shape=SHAPE_ID[b[3] if len(b) > 3 else "box"],
        )
        for b in boxes
    ]
    return Scene.create(scene_id, size, box_list, [Material(0, (density, density))], [texture])
