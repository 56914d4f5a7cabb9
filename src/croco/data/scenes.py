"""Procedural indoor scenes: closed rooms with furniture made of boxes, textured surfaces, lights, a walkable
area.

World frame (see ``croco.data.cameras``): y up, metres; a room spans [0, Lx] x [0, Ly] x [0, Lz], floor at y =
0, ceiling at y = Ly. Everything else is a box (centre, half extents, yaw about y), grouped into furniture:
tables with legs and clutter on top, chairs facing them, cabinets and bookcases against walls, beds, sofas,
floor lamps, pillars, a partition wall with a doorway, rugs, and paintings on the walls. Each box carries a
material (a texture of ``croco.data.textures`` with a texel density and offset) and a surface class, so
renders come with per-pixel semantics.

The walkable area (floor minus object footprints grown by a margin, and a margin to the walls) plays the role
of Habitat's navmesh: ``sample_navigable_point`` / ``snap_point`` / ``is_navigable`` implement
``croco.data.cameras.NavigableScene``. A scene is fully determined by ``(seed, index)``: its random generator
is derived from both, so any job can rebuild any scene without having built the previous ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from croco.data.textures import TextureAtlas, TextureBank, texture_bank

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
)
"""Per-pixel surface classes of the semantics maps (uint8 index into this tuple; 0 = nothing hit)."""
CLASS_ID: dict[str, int] = {name: index for index, name in enumerate(SURFACE_CLASSES)}

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
    """A texture of the scene atlas and how it is laid on a surface (texels/metre along u and v, offset)."""

    texture: int
    texels_per_metre: tuple[float, float]
    offset: tuple[float, float] = (0.0, 0.0)


@dataclass
class Box:
    """An oriented box: centre (3,), half extents (3,), yaw (rad) about the y axis, material and class ids."""

    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0
    material: int = 0
    semantic: int = CLASS_ID["clutter"]
    obstacle: bool = True
    shadow: float = 0.5
    """Strength of the contact shadow this box casts on the floor (0 for none); only obstacles cast one."""


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
            if not 0 <= material.texture < len(textures):
                raise ValueError(f"scene {scene_id}: material texture {material.texture} out of range")
        count = len(boxes)
        for box in boxes:
            if not 0 <= box.material < len(materials) or min(box.half) <= 0:
                raise ValueError(f"scene {scene_id}: bad box {box} (material index / positive half extents)")
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
        """(N, B') distance in the floor plane from points to the selected boxes' footprints (0 inside)."""
        centres = self.centres[which][:, [0, 2]]
        halves = self.halves[which][:, [0, 2]]
        yaws = self.yaws[which]
        offset = points_xz[:, None, :] - centres[None, :, :]
        c, s = np.cos(yaws)[None, :], np.sin(yaws)[None, :]
        # world -> local for a yaw about y: x_l = c*x - s*z, z_l = s*x + c*z
        local_x = c * offset[..., 0] - s * offset[..., 1]
        local_z = s * offset[..., 0] + c * offset[..., 1]
        outside_x = np.maximum(np.abs(local_x) - halves[None, :, 0], 0.0)
        outside_z = np.maximum(np.abs(local_z) - halves[None, :, 1], 0.0)
        return np.hypot(outside_x, outside_z)

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


# --------------------------------------------------------------------------------------------- generation


def scene_name(seed: int, index: int) -> str:
    """Scene id of a synthetic scene (the train/val split is by this id)."""
    return f"synthetic-{seed}-{index:06d}"


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that builds scene ``index`` of ``seed`` (independent of every other scene)."""
    return np.random.default_rng([int(seed), 0x5CE7E, int(index)])


FLOOR_KINDS = ("wood", "wood", "tiles", "carpet", "marble", "stone")
WALL_KINDS = ("plaster", "plaster", "wallpaper", "wallpaper", "brick", "stone", "tiles")
CEILING_KINDS = ("plaster", "stone")
WOOD_KINDS = ("wood", "wood", "marble", "stone", "plaster")
SOFT_KINDS = ("fabric", "carpet", "wallpaper")
CLUTTER_KINDS = ("wood", "fabric", "painting", "wallpaper", "stone", "marble", "carpet", "tiles")


class _RoomBuilder:
    """Random furniture placement with footprint collision checks (the generator's private workshop)."""

    def __init__(self, rng: np.random.Generator, bank: TextureBank, size: np.ndarray) -> None:
        self.rng = rng
        self.bank = bank
        self.size = size
        self.textures: list[np.ndarray] = []
        self.texture_kinds: list[str] = []
        self.materials: list[Material] = []
        self.boxes: list[Box] = []
        self.footprints: list[tuple[np.ndarray, np.ndarray, float]] = []  # (centre xz, half xz, yaw)
        self.keep_out: list[tuple[np.ndarray, np.ndarray, float]] = []

    # materials
    def texture(self, kinds: tuple[str, ...], reuse: float) -> int:
        """A texture of one of ``kinds``: a new colouring of a bank pattern, or (with probability ``reuse``,
        and always once the scene holds MAX_SCENE_TEXTURES) one the scene already has, so that small objects
        do not each cost a texture (colouring and mip-mapping dominate the cost of building a scene)."""
        existing = [index for index, kind in enumerate(self.texture_kinds) if kind in kinds]
        full = len(self.textures) >= MAX_SCENE_TEXTURES
        if existing and (full or self.rng.random() < reuse):
            return existing[int(self.rng.integers(len(existing)))]
        if full:
            return int(self.rng.integers(len(self.textures)))
        pattern = self.bank.pick(self.rng, kinds)
        self.textures.append(self.bank.colorize(pattern, self.rng))
        self.texture_kinds.append(self.bank.patterns[pattern].kind)
        return len(self.textures) - 1

    def material(self, kinds: tuple[str, ...], tile_metres: tuple[float, float], reuse: float = 0.2) -> int:
        texture = self.texture(kinds, reuse)
        side = self.rng.uniform(*tile_metres)
        density = self.bank.size / side
        offset = tuple(float(x) for x in self.rng.uniform(0, self.bank.size, size=2))
        self.materials.append(Material(texture, (density, density), offset))  # type: ignore[arg-type]
        return len(self.materials) - 1

    def painting_material(self, width: float, height: float) -> int:
        texture = self.texture(("painting",), reuse=0.0)
        # exactly one copy of the painting across the canvas
        self.materials.append(Material(texture, (self.bank.size / width, self.bank.size / height)))
        return len(self.materials) - 1

    # footprints
    @staticmethod
    def _corners(centre: np.ndarray, half: np.ndarray, yaw: float) -> np.ndarray:
        c, s = math.cos(yaw), math.sin(yaw)
        local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        # local (x, z) -> world: x = c*x_l + s*z_l, z = -s*x_l + c*z_l
        return centre + np.stack(
            [c * local[:, 0] + s * local[:, 1], -s * local[:, 0] + c * local[:, 1]], axis=1
        )

    @classmethod
    def _overlap(
        cls, a: tuple[np.ndarray, np.ndarray, float], b: tuple[np.ndarray, np.ndarray, float], gap: float
    ) -> bool:
        """Separating-axis test of two footprints, each grown by gap/2."""
        corners_a = cls._corners(a[0], a[1] + gap / 2, a[2])
        corners_b = cls._corners(b[0], b[1] + gap / 2, b[2])
        for yaw in (a[2], b[2]):
            c, s = math.cos(yaw), math.sin(yaw)
            for axis in (np.array([c, -s]), np.array([s, c])):
                pa, pb = corners_a @ axis, corners_b @ axis
                if pa.max() < pb.min() or pb.max() < pa.min():
                    return False
        return True

    def fits(self, centre: np.ndarray, half: np.ndarray, yaw: float, gap: float = 0.05) -> bool:
        corners = self._corners(centre, half, yaw)
        if (
            np.any(corners < 0.01)
            or np.any(corners[:, 0] > self.size[0] - 0.01)
            or np.any(corners[:, 1] > self.size[2] - 0.01)
        ):
            return False
        candidate = (centre, half, yaw)
        return not any(self._overlap(candidate, other, gap) for other in self.footprints + self.keep_out)

    def occupied_fraction(self) -> float:
        area = sum(4 * h[0] * h[1] for _, h, _ in self.footprints)
        return area / (self.size[0] * self.size[2])

    def place(self, half: np.ndarray, against_wall: bool, tries: int = 25) -> tuple[np.ndarray, float] | None:
        """Find a free (centre xz, yaw) for a footprint; against a wall it faces into the room (+z local)."""
        for _ in range(tries):
            if against_wall:
                wall = int(self.rng.integers(4))
                gap = self.rng.uniform(0.01, 0.05)
                if wall < 2:  # walls z = 0 (yaw 0) and z = Lz (yaw pi): along-wall axis is x
                    along = self.rng.uniform(half[0], self.size[0] - half[0])
                    depth = half[1] + gap
                    centre = np.array([along, depth if wall == 0 else self.size[2] - depth])
                    yaw = 0.0 if wall == 0 else math.pi
                else:  # walls x = 0 (yaw pi/2) and x = Lx (yaw -pi/2): along-wall axis is z
                    along = self.rng.uniform(half[0], self.size[2] - half[0])
                    depth = half[1] + gap
                    centre = np.array([depth if wall == 2 else self.size[0] - depth, along])
                    yaw = math.pi / 2 if wall == 2 else -math.pi / 2
            else:
                centre = self.rng.uniform([0.3, 0.3], [self.size[0] - 0.3, self.size[2] - 0.3])
                yaw = (
                    self.rng.integers(4) * math.pi / 2 + self.rng.normal(0.0, 0.05)
                    if self.rng.random() < 0.6
                    else self.rng.uniform(0.0, 2 * math.pi)
                )
            if self.fits(centre, half, yaw):
                return centre, float(yaw)
        return None

    # boxes
    def add_part(
        self,
        origin: np.ndarray,
        yaw: float,
        local_centre: tuple[float, float, float],
        half: tuple[float, float, float],
        material: int,
        semantic: str,
        *,
        obstacle: bool = True,
        shadow: float = 0.5,
        extra_yaw: float = 0.0,
    ) -> None:
        """Add a box given in an object's local frame (origin on the floor, object yaw)."""
        world = np.array([origin[0], 0.0, origin[1]]) + yaw_matrix(yaw) @ np.asarray(local_centre)
        self.boxes.append(
            Box(tuple(world), half, yaw + extra_yaw, material, CLASS_ID[semantic], obstacle, shadow)
        )

    def register(self, centre: np.ndarray, half: np.ndarray, yaw: float) -> None:
        self.footprints.append(
            (np.asarray(centre, dtype=np.float64), np.asarray(half, dtype=np.float64), yaw)
        )

    def clutter_on(
        self, origin: np.ndarray, yaw: float, top: float, half_x: float, half_z: float, count: int
    ) -> None:
        """Small boxes lying on a horizontal surface at height ``top``."""
        for _ in range(count):
            size = self.rng.uniform(0.04, min(0.18, half_x * 0.6, half_z * 0.6), size=3)
            size[1] = self.rng.uniform(0.03, 0.2)
            x = self.rng.uniform(-half_x + size[0], half_x - size[0])
            z = self.rng.uniform(-half_z + size[2], half_z - size[2])
            material = self.material(CLUTTER_KINDS, (0.2, 0.6), reuse=0.7)
            self.add_part(
                origin,
                yaw,
                (x, top + size[1], z),
                tuple(size),
                material,
                "clutter",
                obstacle=False,
                extra_yaw=self.rng.uniform(-0.6, 0.6),
            )


def _add_partition(builder: _RoomBuilder, wall_material: int) -> None:
    """A full-height partition wall across the room with a doorway (and a door header)."""
    rng, size = builder.rng, builder.size
    axis = 0 if size[0] >= size[2] else 2  # the partition is perpendicular to the longer axis
    length_axis = 2 if axis == 0 else 0
    position = rng.uniform(0.38, 0.62) * size[axis]
    thickness = rng.uniform(0.08, 0.15) / 2
    span = size[length_axis]
    door_width = rng.uniform(0.8, 1.4)
    door_start = rng.uniform(0.0, span - door_width) if rng.random() < 0.5 else 0.0
    door_height = min(rng.uniform(2.0, 2.3), size[1] - 0.2)
    segments = [
        (0.0, door_start, 0.0, size[1]),
        (door_start + door_width, span, 0.0, size[1]),
        (door_start, door_start + door_width, door_height, size[1]),
    ]
    for start, stop, bottom, top in segments:
        if stop - start < 0.05:
            continue
        centre_along, half_along = (start + stop) / 2, (stop - start) / 2
        centre = [0.0, (bottom + top) / 2, 0.0]
        half = [0.0, (top - bottom) / 2, 0.0]
        centre[axis], half[axis] = position, thickness
        centre[length_axis], half[length_axis] = centre_along, half_along
        is_header = bottom > 0
        builder.boxes.append(
            Box(
                tuple(centre),
                tuple(half),
                0.0,
                wall_material,
                CLASS_ID["wall"],
                obstacle=not is_header,
                shadow=0.0 if is_header else 0.35,
            )
        )
        if not is_header:
            builder.register(np.array([centre[0], centre[2]]), np.array([half[0], half[2]]), 0.0)
    door_centre = [0.0, 0.0]
    door_half = [0.0, 0.0]
    door_centre[0 if axis == 0 else 1] = position
    door_centre[1 if axis == 0 else 0] = door_start + door_width / 2
    door_half[0 if axis == 0 else 1] = 0.8
    door_half[1 if axis == 0 else 0] = door_width / 2
    builder.keep_out.append((np.array(door_centre), np.array(door_half), 0.0))


def _table(builder: _RoomBuilder) -> None:
    rng = builder.rng
    half = np.array([rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.5)])
    spot = builder.place(half, against_wall=rng.random() < 0.3)
    if spot is None:
        return
    origin, yaw = spot
    height = rng.uniform(0.7, 0.78)
    material = builder.material(WOOD_KINDS, (0.6, 1.5))
    builder.add_part(
        origin, yaw, (0, height - 0.02, 0), (half[0], 0.02, half[1]), material, "table", shadow=0.35
    )
    leg = rng.uniform(0.02, 0.04)
    for sx in (-1, 1):
        for sz in (-1, 1):
            builder.add_part(
                origin,
                yaw,
                (sx * (half[0] - 0.05), (height - 0.04) / 2, sz * (half[1] - 0.05)),
                (leg, (height - 0.04) / 2, leg),
                material,
                "table",
                shadow=0.0,
            )
    builder.register(origin, half, yaw)
    builder.clutter_on(origin, yaw, height, half[0], half[1], int(rng.integers(0, 4)))
    chair_material = builder.material(WOOD_KINDS + SOFT_KINDS, (0.4, 1.0))
    for _ in range(int(rng.integers(0, 5))):  # chairs around the table, facing it
        side = int(rng.integers(4))
        chair_half = np.array([0.23, 0.23])
        distance = (half[1] if side < 2 else half[0]) + rng.uniform(0.15, 0.35)
        along = rng.uniform(-0.5, 0.5) * (half[0] if side < 2 else half[1])
        local = {0: (along, distance), 1: (along, -distance), 2: (distance, along), 3: (-distance, along)}[
            side
        ]
        rotation = yaw_matrix(yaw)
        offset = rotation @ np.array([local[0], 0.0, local[1]])
        chair_origin = origin + offset[[0, 2]]
        # the chair's front (+z local) points towards the table centre
        chair_yaw = math.atan2(-offset[0], -offset[2]) + rng.normal(0, 0.1)
        if builder.fits(chair_origin, chair_half, chair_yaw, gap=0.02):
            _chair_parts(builder, chair_origin, chair_yaw, chair_material)


def _chair_parts(builder: _RoomBuilder, origin: np.ndarray, yaw: float, material: int) -> None:
    rng = builder.rng
    width, seat = rng.uniform(0.2, 0.25), rng.uniform(0.43, 0.48)
    builder.add_part(origin, yaw, (0, seat, 0), (width, 0.025, width), material, "chair", shadow=0.3)
    for sx in (-1, 1):
        for sz in (-1, 1):
            builder.add_part(
                origin,
                yaw,
                (sx * (width - 0.03), seat / 2, sz * (width - 0.03)),
                (0.02, seat / 2, 0.02),
                material,
                "chair",
                shadow=0.0,
            )
    back = rng.uniform(0.3, 0.5)
    builder.add_part(
        origin,
        yaw,
        (0, seat + back / 2, -width + 0.02),
        (width, back / 2, 0.02),
        material,
        "chair",
        shadow=0.0,
    )
    builder.register(origin, np.array([width, width]), yaw)


def _cabinet(builder: _RoomBuilder) -> None:
    rng = builder.rng
    half = np.array([rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.32)])
    spot = builder.place(half, against_wall=True)
    if spot is None:
        return
    origin, yaw = spot
    height = rng.uniform(0.6, min(2.2, builder.size[1] - 0.3))
    material = builder.material(WOOD_KINDS, (0.5, 1.5))
    builder.add_part(origin, yaw, (0, height / 2, 0), (half[0], height / 2, half[1]), material, "cabinet")
    if rng.random() < 0.6:  # a plinth/top in another material
        top = builder.material(WOOD_KINDS, (0.5, 1.5))
        builder.add_part(
            origin, yaw, (0, height + 0.015, 0), (half[0] + 0.02, 0.015, half[1] + 0.02), top, "cabinet"
        )
        height += 0.03
    builder.register(origin, half, yaw)
    if height < 1.3:
        builder.clutter_on(origin, yaw, height, half[0], half[1], int(rng.integers(0, 4)))


def _bookcase(builder: _RoomBuilder) -> None:
    rng = builder.rng
    half = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.2)])
    spot = builder.place(half, against_wall=True)
    if spot is None:
        return
    origin, yaw = spot
    height = rng.uniform(1.2, min(2.2, builder.size[1] - 0.3))
    board = 0.015
    material = builder.material(WOOD_KINDS, (0.5, 1.2))
    for sx in (-1, 1):
        builder.add_part(
            origin,
            yaw,
            (sx * (half[0] - board), height / 2, 0),
            (board, height / 2, half[1]),
            material,
            "shelf",
        )
    builder.add_part(
        origin, yaw, (0, height / 2, -half[1] + board), (half[0], height / 2, board), material, "shelf"
    )
    levels = int(rng.integers(3, 6))
    for level in range(levels + 1):
        y = board + level * (height - 2 * board) / levels
        builder.add_part(
            origin, yaw, (0, y, 0), (half[0] - 2 * board, board, half[1]), material, "shelf", shadow=0.0
        )
        if level < levels:  # rows of books: a few blocks per shelf
            gap = (height - 2 * board) / levels
            x = -half[0] + 2 * board
            for _ in range(int(rng.integers(1, 4))):
                width = rng.uniform(0.08, 0.35)
                if x + width > half[0] - 2 * board:
                    break
                book_height = rng.uniform(0.5, 0.85) * gap
                book = builder.material(CLUTTER_KINDS, (0.15, 0.5), reuse=0.7)
                depth = rng.uniform(0.6, 0.9) * half[1]
                builder.add_part(
                    origin,
                    yaw,
                    (x + width / 2, y + board + book_height / 2, -half[1] + depth + 0.02),
                    (width / 2, book_height / 2, depth),
                    book,
                    "clutter",
                    obstacle=False,
                )
                x += width + rng.uniform(0.0, 0.15)
    builder.register(origin, half, yaw)


def _bed(builder: _RoomBuilder) -> None:
    rng = builder.rng
    half = np.array([rng.uniform(0.45, 0.95), rng.uniform(0.95, 1.05)])
    spot = builder.place(half, against_wall=True)
    if spot is None:
        return
    origin, yaw = spot
    frame = builder.material(WOOD_KINDS, (0.6, 1.5))
    sheets = builder.material(SOFT_KINDS, (0.5, 1.5))
    base = rng.uniform(0.25, 0.35)
    mattress = rng.uniform(0.18, 0.25)
    builder.add_part(origin, yaw, (0, base / 2, 0), (half[0], base / 2, half[1]), frame, "bed")
    builder.add_part(
        origin,
        yaw,
        (0, base + mattress / 2, 0.02),
        (half[0] - 0.03, mattress / 2, half[1] - 0.05),
        sheets,
        "bed",
    )
    head = rng.uniform(0.8, 1.2)
    builder.add_part(origin, yaw, (0, head / 2, -half[1] + 0.03), (half[0], head / 2, 0.03), frame, "bed")
    pillow = builder.material(SOFT_KINDS, (0.3, 0.8), reuse=0.5)
    count = 2 if half[0] > 0.7 else 1
    for index in range(count):
        x = 0.0 if count == 1 else (index - 0.5) * half[0]
        builder.add_part(
            origin,
            yaw,
            (x, base + mattress + 0.06, -half[1] + 0.3),
            (min(0.3, half[0] / count - 0.05), 0.06, 0.18),
            pillow,
            "bed",
            obstacle=False,
        )
    builder.register(origin, half, yaw)


def _sofa(builder: _RoomBuilder) -> None:
    rng = builder.rng
    half = np.array([rng.uniform(0.75, 1.2), rng.uniform(0.4, 0.5)])
    spot = builder.place(half, against_wall=rng.random() < 0.7)
    if spot is None:
        return
    origin, yaw = spot
    fabric = builder.material(SOFT_KINDS, (0.4, 1.2))
    seat = rng.uniform(0.38, 0.45)
    builder.add_part(
        origin, yaw, (0, seat / 2, 0.05), (half[0] - 0.12, seat / 2, half[1] - 0.05), fabric, "sofa"
    )
    back = rng.uniform(0.75, 0.95)
    builder.add_part(origin, yaw, (0, back / 2, -half[1] + 0.1), (half[0], back / 2, 0.1), fabric, "sofa")
    arm = rng.uniform(0.55, 0.65)
    for sx in (-1, 1):
        builder.add_part(
            origin, yaw, (sx * (half[0] - 0.06), arm / 2, 0.0), (0.06, arm / 2, half[1]), fabric, "sofa"
        )
    builder.register(origin, half, yaw)


def _lamp(builder: _RoomBuilder) -> None:
    rng = builder.rng
    half = np.array([0.18, 0.18])
    spot = builder.place(half, against_wall=False)
    if spot is None:
        return
    origin, yaw = spot
    metal = builder.material(("stone", "marble", "wood"), (0.3, 0.8))
    shade = builder.material(SOFT_KINDS + ("plaster",), (0.3, 0.8))
    height = rng.uniform(1.3, 1.7)
    builder.add_part(origin, yaw, (0, 0.015, 0), (0.15, 0.015, 0.15), metal, "lamp", shadow=0.3)
    builder.add_part(origin, yaw, (0, height / 2, 0), (0.015, height / 2, 0.015), metal, "lamp", shadow=0.0)
    builder.add_part(origin, yaw, (0, height + 0.12, 0), (0.18, 0.14, 0.18), shade, "lamp", shadow=0.0)
    builder.register(origin, half, yaw)


def _crates(builder: _RoomBuilder) -> None:
    rng = builder.rng
    half = np.array([rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4)])
    spot = builder.place(half, against_wall=rng.random() < 0.5)
    if spot is None:
        return
    origin, yaw = spot
    y = 0.0
    for level in range(int(rng.integers(1, 4))):
        shrink = 1.0 - 0.2 * level
        height = rng.uniform(0.15, 0.45)
        material = builder.material(CLUTTER_KINDS, (0.3, 1.0), reuse=0.5)
        builder.add_part(
            origin,
            yaw,
            (0, y + height / 2, 0),
            (half[0] * shrink, height / 2, half[1] * shrink),
            material,
            "clutter",
            obstacle=True,
            extra_yaw=rng.normal(0, 0.15) if level else 0.0,
        )
        y += height
    builder.register(origin, half, yaw)


def _pillar(builder: _RoomBuilder, wall_material: int) -> None:
    rng = builder.rng
    half = np.array([rng.uniform(0.15, 0.3)] * 2)
    spot = builder.place(half, against_wall=False)
    if spot is None:
        return
    origin, yaw = spot
    yaw = 0.0
    builder.boxes.append(
        Box(
            (origin[0], builder.size[1] / 2, origin[1]),
            (half[0], builder.size[1] / 2, half[1]),
            yaw,
            wall_material,
            CLASS_ID["wall"],
            True,
            0.4,
        )
    )
    builder.register(origin, half, yaw)


def _rug(builder: _RoomBuilder) -> None:
    rng = builder.rng
    half = rng.uniform([0.5, 0.4], [1.5, 1.0])
    centre = rng.uniform(half + 0.3, [builder.size[0] - half[0] - 0.3, builder.size[2] - half[1] - 0.3])
    if np.any(centre < half):
        return
    material = builder.material(("carpet", "fabric", "wallpaper", "painting"), (0.8, 2.0))
    builder.boxes.append(
        Box(
            (centre[0], 0.004, centre[1]),
            (half[0], 0.004, half[1]),
            float(rng.integers(2) * math.pi / 2 + rng.normal(0, 0.05)),
            material,
            CLASS_ID["rug"],
            obstacle=False,
            shadow=0.0,
        )
    )


def _pictures(builder: _RoomBuilder, count: int) -> None:
    rng, size = builder.rng, builder.size
    for _ in range(count):
        width, height = rng.uniform(0.3, 1.2), rng.uniform(0.3, 0.9)
        wall = int(rng.integers(4))
        centre_y = rng.uniform(1.2, min(1.9, size[1] - height / 2 - 0.1))
        depth = rng.uniform(0.01, 0.03)
        length = size[0] if wall < 2 else size[2]
        if length < width + 0.2:
            continue
        along = rng.uniform(width / 2 + 0.1, length - width / 2 - 0.1)
        material = builder.painting_material(width, height)
        if wall == 0:
            centre, half = (along, centre_y, depth), (width / 2, height / 2, depth)
        elif wall == 1:
            centre, half = (along, centre_y, size[2] - depth), (width / 2, height / 2, depth)
        elif wall == 2:
            centre, half = (depth, centre_y, along), (depth, height / 2, width / 2)
        else:
            centre, half = (size[0] - depth, centre_y, along), (depth, height / 2, width / 2)
        builder.boxes.append(
            Box(centre, half, 0.0, material, CLASS_ID["picture"], obstacle=False, shadow=0.0)
        )


_FURNITURE = (_table, _table, _cabinet, _bookcase, _bed, _sofa, _lamp, _crates, _crates)


def build_synthetic_scene(seed: int, index: int, *, bank_size: int = 40, texture_size: int = 256) -> Scene:
    """Procedural room number ``index`` of generator ``seed`` (deterministic, independent of other scenes).

    A layout whose walkable area is too small for cameras (tiny room crowded with furniture) is redrawn from
    the same generator, so the result stays a pure function of (seed, index).
    """
    rng = scene_rng(seed, index)
    bank = texture_bank(seed, bank_size, texture_size)
    for _ in range(20):
        scene = _draw_scene(rng, bank, scene_name(seed, index))
        if scene.walkable_fraction >= MIN_WALKABLE_FRACTION:
            return scene
    raise RuntimeError(f"scene {scene_name(seed, index)}: no layout with a walkable area after 20 draws")


MIN_WALKABLE_FRACTION = 0.08
"""Smallest walkable share of the floor accepted for a generated room."""


def _draw_scene(rng: np.random.Generator, bank: TextureBank, scene_id: str) -> Scene:
    size = np.array([rng.uniform(4.0, 10.0), rng.uniform(2.4, 3.2), rng.uniform(4.0, 10.0)])
    builder = _RoomBuilder(rng, bank, size)
    floor = builder.material(FLOOR_KINDS, (0.8, 2.5))
    wall = builder.material(WALL_KINDS, (0.8, 2.5))
    accent = builder.material(WALL_KINDS, (0.8, 2.5)) if rng.random() < 0.35 else wall
    ceiling = builder.material(CEILING_KINDS, (1.0, 3.0))
    walls = [wall, wall, wall, wall]
    walls[int(rng.integers(4))] = accent
    room_materials = (walls[0], walls[1], floor, ceiling, walls[2], walls[3])
    if max(size[0], size[2]) > 5.5 and rng.random() < 0.6:
        _add_partition(builder, wall)
    if rng.random() < 0.2:
        _pillar(builder, wall)
    if rng.random() < 0.5:
        _rug(builder)
    for _ in range(int(rng.integers(6, 17))):
        if builder.occupied_fraction() > 0.4:
            break
        _FURNITURE[int(rng.integers(len(_FURNITURE)))](builder)
    _pictures(builder, int(rng.integers(2, 7)))
    lights = []
    for _ in range(int(rng.integers(1, 4))):
        position = (
            rng.uniform(0.2, 0.8) * size[0],
            size[1] - rng.uniform(0.3, 0.7),
            rng.uniform(0.2, 0.8) * size[2],
        )
        warmth = rng.uniform(-1.0, 1.0)
        colour = (1.0 + 0.12 * warmth, 1.0, 1.0 - 0.15 * warmth)
        lights.append((position, colour))
    return Scene.create(
        scene_id,
        tuple(size),  # type: ignore[arg-type]
        builder.boxes,
        builder.materials,
        builder.textures,
        room_materials=room_materials,  # type: ignore[arg-type]
        lights=lights,
        ambient=rng.uniform(0.25, 0.45),
        exposure=rng.uniform(0.85, 1.25),
    )


def simple_scene(
    size: tuple[float, float, float],
    boxes: list[tuple[tuple[float, float, float], tuple[float, float, float], float]] = (),  # type: ignore[assignment]
    *,
    scene_id: str = "simple",
    seed: int = 0,
    texture_size: int = 64,
) -> Scene:
    """A room with explicitly placed boxes ((centre, half extents, yaw) each), all sharing one noise texture.

    For checks against known geometry (a camera facing a wall, an occluder in between) and for examples; the
    generator uses ``build_synthetic_scene``.
    """
    from croco.data.textures import spectral_noise

    rng = np.random.default_rng(seed)
    grey = (spectral_noise(rng, texture_size, alpha=1.0) * 200 + 30).astype(np.uint8)
    texture = np.repeat(grey[..., None], 3, axis=2)
    density = texture_size / 1.0  # one texture tile per metre
    box_list = [Box(tuple(c), tuple(h), float(y), 0, CLASS_ID["clutter"]) for c, h, y in boxes]
    return Scene.create(scene_id, size, box_list, [Material(0, (density, density))], [texture])
