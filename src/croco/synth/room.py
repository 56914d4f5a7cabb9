"""Procedural rooms: a closed box of walls, floor and ceiling, a partition with a doorway or a pillar
sometimes, doors and windows (frames, sills, curtains, radiators), furniture placed without collisions, plants
and clutter, shelves and framed pictures on the walls, a few lights with pendant shades.

``build_synthetic_scene(seed, index)`` is the generator's scene source: a pure function of ``(seed, index)``
(its random generator is derived from both), so any job can rebuild any scene without building the others.
``RoomBuilder`` is the workshop: materials drawn from the texture bank, footprints and collision checks.
"""

from __future__ import annotations

import math

import numpy as np

from croco.synth.furniture import (
    CEILING_KINDS,
    CLUTTER_KINDS,
    FLOOR_KINDS,
    FURNITURE_DRAWS,
    PIECES,
    WALL_KINDS,
    Piece,
    doors,
    partition,
    pendant,
    pictures,
    rug,
    wall_shelves,
    windows,
)
from croco.synth.scene import CLASS_ID, MAX_SCENE_TEXTURES, SHAPE_ID, Box, Material, Scene, yaw_matrix
from croco.synth.textures import TextureBank, texture_bank

MACRO_STRENGTH: dict[str, tuple[float, float]] = {
    "plaster": (0.15, 0.4),
    "stone": (0.2, 0.45),
    "wallpaper": (0.15, 0.35),
    "brick": (0.15, 0.35),
    "wood": (0.12, 0.3),
    "carpet": (0.15, 0.35),
    "tiles": (0.1, 0.25),
    "marble": (0.1, 0.25),
    "terrazzo": (0.1, 0.25),
    "fabric": (0.1, 0.25),
    "metal": (0.1, 0.25),
    "foliage": (0.1, 0.25),
    "painting": (0.0, 0.0),
}
"""Range of the macro layer's strength per texture kind (paintings are laid once, they need none)."""
GLOSS: dict[str, float] = {
    "marble": 0.6,
    "tiles": 0.7,
    "metal": 0.8,
    "terrazzo": 0.5,
    "wood": 0.35,
    "painting": 0.2,
}
"""Gloss per texture kind (others 0.05): how strong the optional specular highlight is on it."""
MACRO_TEXTURES = 2
"""Macro textures per room (materials draw one of them with their own scale and offset)."""


class RoomBuilder:
    """Random furniture placement with footprint collision checks (the generator's private workshop)."""

    def __init__(self, rng: np.random.Generator, bank: TextureBank, size: np.ndarray) -> None:
        self.rng = rng
        self.wall_material = -1  # the walls' material, once drawn (pillars and partitions share it)
        self.bank = bank
        self.size = size
        self.textures: list[np.ndarray] = []
        self.texture_kinds: list[str] = []
        self.materials: list[Material] = []
        self.boxes: list[Box] = []
        self.footprints: list[tuple[np.ndarray, np.ndarray, float]] = []  # (centre xz, half xz, yaw)
        self.keep_out: list[tuple[np.ndarray, np.ndarray, float]] = []
        self.wall_spans: list[list[tuple[float, float, float, float]]] = [[], [], [], []]
        """Per wall (0: z = 0, 1: z = Lz, 2: x = 0, 3: x = Lx): (start, stop, bottom, top) already used."""
        self.macros = []
        for _ in range(MACRO_TEXTURES):  # the first textures of the room, shared by all its materials
            self.textures.append(bank.macros[int(rng.integers(len(bank.macros)))])
            self.texture_kinds.append("macro")
            self.macros.append(len(self.textures) - 1)

    # materials
    def texture(self, kinds: tuple[str, ...], reuse: float) -> int:
        """A texture of one of ``kinds``: a new colouring of a bank pattern, or (with probability ``reuse``,
        and always once the scene holds MAX_SCENE_TEXTURES) one the scene already has, so that small objects
        do not each cost a texture (colouring and mip-mapping dominate the cost of building a scene)."""
        existing = [index for index, kind in enumerate(self.texture_kinds) if kind in kinds]
        full = len(self.textures) - len(self.macros) >= MAX_SCENE_TEXTURES
        if existing and (full or self.rng.random() < reuse):
            return existing[int(self.rng.integers(len(existing)))]
        if full:
            colour = [index for index, kind in enumerate(self.texture_kinds) if kind != "macro"]
            return colour[int(self.rng.integers(len(colour)))]
        pattern = self.bank.pick(self.rng, kinds)
        self.textures.append(self.bank.colorize(pattern, self.rng))
        self.texture_kinds.append(self.bank.patterns[pattern].kind)
        return len(self.textures) - 1

    def material(self, kinds: tuple[str, ...], tile_metres: tuple[float, float], reuse: float = 0.2) -> int:
        """A material of one of ``kinds`` whose texture tile spans U[tile_metres] metres, with a macro layer
        at U[0.22, 0.45] times the texture's scale (an irrational-looking ratio: repeats never line up)."""
        texture = self.texture(kinds, reuse)
        kind = self.texture_kinds[texture]
        side = self.rng.uniform(*tile_metres)
        density = self.bank.size / side
        offset = tuple(float(x) for x in self.rng.uniform(0, self.bank.size, size=2))
        macro_offset = tuple(float(x) for x in self.rng.uniform(0, self.bank.size, size=2))
        tint = tuple(float(x) for x in 1.0 + self.rng.normal(0.0, 0.08, size=3))
        self.materials.append(
            Material(
                texture,
                (density, density),
                offset,  # type: ignore[arg-type]
                macro_texture=self.macros[int(self.rng.integers(len(self.macros)))],
                macro_ratio=float(self.rng.uniform(0.22, 0.45)),
                macro_offset=macro_offset,  # type: ignore[arg-type]
                macro_strength=float(self.rng.uniform(*MACRO_STRENGTH[kind])),
                tint=tint,  # type: ignore[arg-type]
                gloss=GLOSS.get(kind, 0.05),
            )
        )
        return len(self.materials) - 1

    def painting_material(self, width: float, height: float) -> int:
        texture = self.texture(("painting",), reuse=0.0)
        # exactly one copy of the painting across the canvas
        self.materials.append(
            Material(texture, (self.bank.size / width, self.bank.size / height), gloss=GLOSS["painting"])
        )
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
        """Separating-axis test of two footprints, each grown by gap/2 (after a bounding-circle test that
        rules out most pairs at a fraction of the cost)."""
        reach = math.hypot(a[1][0], a[1][1]) + math.hypot(b[1][0], b[1][1]) + gap * math.sqrt(2.0)
        if math.hypot(a[0][0] - b[0][0], a[0][1] - b[0][1]) > reach:
            return False
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

    def place_piece(self, piece: Piece) -> bool:
        """Draw the piece's footprint and side, find it a free spot and build it there; False if none was
        free."""
        half = piece.footprint(self.rng)
        p = piece.wall_probability
        against_wall = p >= 1.0 or (p > 0.0 and self.rng.random() < p)
        spot = self.place(half, against_wall=against_wall)
        if spot is None:
            return False
        piece.build(self, spot[0], spot[1], half)
        return True

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
        shape: str = "box",
    ) -> None:
        """Add a primitive given in an object's local frame (origin on the floor, object yaw)."""
        world = np.array([origin[0], 0.0, origin[1]]) + yaw_matrix(yaw) @ np.asarray(local_centre)
        self.boxes.append(
            Box(
                tuple(world),
                tuple(float(h) for h in half),
                yaw + extra_yaw,
                material,
                CLASS_ID[semantic],
                obstacle,
                shadow,
                SHAPE_ID[shape],
            )
        )

    def wall_spot(
        self, width: float, bottom: float, top: float, tries: int = 12, margin: float = 0.1
    ) -> tuple[int, float] | None:
        """(wall, position along it) of a free stretch of ``width`` metres between heights bottom and top, at
        least ``margin`` from the corners and from what is already on that wall; None if none was found."""
        for _ in range(tries):
            wall = int(self.rng.integers(4))
            length = self.size[0] if wall < 2 else self.size[2]
            if length < width + 2 * margin + 0.2:
                continue
            along = self.rng.uniform(width / 2 + margin + 0.1, length - width / 2 - margin - 0.1)
            start, stop = along - width / 2 - margin, along + width / 2 + margin
            if all(
                stop <= s0 or start >= s1 or top <= b0 or bottom >= b1
                for s0, s1, b0, b1 in self.wall_spans[wall]
            ):
                self.wall_spans[wall].append((start + margin, stop - margin, bottom, top))
                return wall, float(along)
        return None

    def wall_part(
        self,
        wall: int,
        along: float,
        y: float,
        half_along: float,
        half_y: float,
        depth: float,
        half_depth: float,
        material: int,
        semantic: str,
        *,
        shape: str = "box",
        obstacle: bool = False,
    ) -> None:
        """A primitive on a wall: centred ``along`` it at height ``y``, ``depth`` from the wall plane."""
        if wall == 0:
            centre, half = (along, y, depth), (half_along, half_y, half_depth)
        elif wall == 1:
            centre, half = (along, y, self.size[2] - depth), (half_along, half_y, half_depth)
        elif wall == 2:
            centre, half = (depth, y, along), (half_depth, half_y, half_along)
        else:
            centre, half = (self.size[0] - depth, y, along), (half_depth, half_y, half_along)
        self.boxes.append(
            Box(
                centre,
                half,
                0.0,
                material,
                CLASS_ID[semantic],
                obstacle=obstacle,
                shadow=0.0,
                shape=SHAPE_ID[shape],
            )
        )

    def wall_point(self, wall: int, along: float, depth: float) -> np.ndarray:
        """Floor-plane (x, z) of a point ``depth`` metres in front of a wall, ``along`` it."""
        if wall == 0:
            return np.array([along, depth])
        if wall == 1:
            return np.array([along, self.size[2] - depth])
        if wall == 2:
            return np.array([depth, along])
        return np.array([self.size[0] - depth, along])

    def register(self, centre: np.ndarray, half: np.ndarray, yaw: float) -> None:
        self.footprints.append(
            (np.asarray(centre, dtype=np.float64), np.asarray(half, dtype=np.float64), yaw)
        )

    def clutter_on(
        self, origin: np.ndarray, yaw: float, top: float, half_x: float, half_z: float, count: int
    ) -> None:
        """Small objects standing on a horizontal surface at height ``top``: boxes (books, packets),
        cylinders (cups, bottles, vases) and ellipsoids (fruit, bowls, balls)."""
        for _ in range(count):
            shape = ("box", "cylinder", "ellipsoid")[int(self.rng.choice(3, p=[0.4, 0.35, 0.25]))]
            limit = min(0.18, half_x * 0.6, half_z * 0.6)
            if limit <= 0.04:
                return
            size = self.rng.uniform(0.04, limit, size=3)
            size[1] = self.rng.uniform(0.03, 0.2)
            if shape == "cylinder":
                size[0] = size[2] = self.rng.uniform(0.03, min(0.1, limit))
                size[1] = self.rng.uniform(0.03, 0.18)
            elif shape == "ellipsoid":
                size[0] = size[2] = self.rng.uniform(0.04, min(0.12, limit))
                size[1] = size[0] * self.rng.uniform(0.5, 1.0)
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
                shape=shape,
            )


def scene_name(seed: int, index: int) -> str:
    """Scene id of a synthetic scene (the train/val split is by this id)."""
    return f"synthetic-{seed}-{index:06d}"


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that builds scene ``index`` of ``seed`` (independent of every other scene)."""
    return np.random.default_rng([int(seed), 0x5CE7E, int(index)])


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
    builder = RoomBuilder(rng, bank, size)
    floor = builder.material(FLOOR_KINDS, (0.8, 2.5))
    wall = builder.wall_material = builder.material(WALL_KINDS, (0.8, 2.5))
    accent = builder.material(WALL_KINDS, (0.8, 2.5)) if rng.random() < 0.35 else wall
    ceiling = builder.material(CEILING_KINDS, (1.0, 3.0))
    walls = [wall, wall, wall, wall]
    walls[int(rng.integers(4))] = accent
    room_materials = (walls[0], walls[1], floor, ceiling, walls[2], walls[3])
    if max(size[0], size[2]) > 5.5 and rng.random() < 0.6:
        partition(builder, wall)
    doors(builder, int(rng.integers(0, 3)))  # before the furniture: their swing area is kept clear
    windows(builder, int(rng.integers(0, 4)))
    if rng.random() < 0.2:
        builder.place_piece(PIECES["pillar"])
    for _ in range(1 + int(rng.random() < 0.3)):
        if rng.random() < 0.75:
            rug(builder)
    for _ in range(int(rng.integers(8, 21))):
        if builder.occupied_fraction() > 0.4:
            break
        builder.place_piece(PIECES[FURNITURE_DRAWS[int(rng.integers(len(FURNITURE_DRAWS)))]])
    wall_shelves(builder, int(rng.integers(0, 3)))
    pictures(builder, int(rng.integers(3, 9)))
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
        if rng.random() < 0.7:
            pendant(builder, position)
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
