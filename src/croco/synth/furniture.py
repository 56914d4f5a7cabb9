"""The furniture of the procedural rooms: each piece is primitives (boxes, vertical cylinders, ellipsoids) in
its own frame (origin on the floor, a yaw).

A placed piece (``Piece``) draws its footprint (half extents in x and z), whether it stands against a wall,
and a free spot for it (``RoomBuilder.place_piece``), then ``build`` adds its primitives there and registers
the footprints that cameras and other pieces must keep clear of. Partitions, rugs, doors, windows, wall
shelves, pictures and pendant lamps follow the room's shape rather than a free spot and are added directly
(wall items claim a free stretch of wall with ``RoomBuilder.wall_spot``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from croco.synth.scene import CLASS_ID, SHAPE_ID, Box, yaw_matrix

if TYPE_CHECKING:
    from croco.synth.room import RoomBuilder

FLOOR_KINDS = ("wood", "wood", "tiles", "carpet", "marble", "stone", "terrazzo")
WALL_KINDS = ("plaster", "plaster", "wallpaper", "wallpaper", "brick", "stone", "tiles")
CEILING_KINDS = ("plaster", "stone")
WOOD_KINDS = ("wood", "wood", "marble", "stone", "plaster", "metal")
SOFT_KINDS = ("fabric", "carpet", "wallpaper")
CLUTTER_KINDS = (
    "wood",
    "fabric",
    "painting",
    "painting",
    "wallpaper",
    "stone",
    "marble",
    "carpet",
    "tiles",
    "metal",
    "terrazzo",
)
POT_KINDS = ("terrazzo", "stone", "metal", "painting", "tiles")
VIEW_KINDS = ("painting", "foliage", "plaster", "stone")
"""What a window shows: a picture of the outside (nothing is seen through it; depth stays the pane's)."""


@dataclass(frozen=True)
class Piece:
    """A kind of furniture: its random footprint, how often it stands against a wall, and its builder."""

    footprint: Callable[[np.random.Generator], np.ndarray]
    wall_probability: float
    build: Callable[[RoomBuilder, np.ndarray, float, np.ndarray], None]


def partition(builder: RoomBuilder, wall_material: int) -> None:
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


def table(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    rng = builder.rng
    height = rng.uniform(0.7, 0.78)
    material = builder.material(WOOD_KINDS, (0.6, 1.5))
    builder.add_part(
        origin, yaw, (0, height - 0.02, 0), (half[0], 0.02, half[1]), material, "table", shadow=0.35
    )
    leg = rng.uniform(0.02, 0.04)
    leg_shape = "cylinder" if rng.random() < 0.5 else "box"
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
                shape=leg_shape,
            )
    builder.register(origin, half, yaw)
    builder.clutter_on(origin, yaw, height, half[0], half[1], int(rng.integers(0, 5)))
    chairs_around(builder, origin, yaw, half, int(rng.integers(0, 5)))


def chairs_around(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray, count: int) -> None:
    """Up to ``count`` chairs around a table footprint, facing it (where they fit)."""
    rng = builder.rng
    chair_material = builder.material(WOOD_KINDS + SOFT_KINDS, (0.4, 1.0))
    for _ in range(count):
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
            chair_parts(builder, chair_origin, chair_yaw, chair_material)


def chair_parts(builder: RoomBuilder, origin: np.ndarray, yaw: float, material: int) -> None:
    rng = builder.rng
    width, seat = rng.uniform(0.2, 0.25), rng.uniform(0.43, 0.48)
    builder.add_part(origin, yaw, (0, seat, 0), (width, 0.025, width), material, "chair", shadow=0.3)
    leg_shape = "cylinder" if rng.random() < 0.5 else "box"
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
                shape=leg_shape,
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


def cabinet(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    rng = builder.rng
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


def bookcase(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    rng = builder.rng
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


def bed(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    rng = builder.rng
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
            (min(0.3, half[0] / count - 0.05), 0.07, 0.18),
            pillow,
            "bed",
            obstacle=False,
            shape="ellipsoid",
        )
    builder.register(origin, half, yaw)


def sofa(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    rng = builder.rng
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
    cushion = builder.material(SOFT_KINDS + ("painting",), (0.3, 0.8), reuse=0.3)
    for _ in range(int(rng.integers(0, 4))):  # loose cushions leaning on the back
        x = rng.uniform(-half[0] + 0.35, half[0] - 0.35)
        builder.add_part(
            origin,
            yaw,
            (x, seat + 0.16, -half[1] + 0.28),
            (0.2, 0.17, 0.08),
            cushion,
            "sofa",
            obstacle=False,
            shape="ellipsoid",
            extra_yaw=rng.normal(0.0, 0.2),
        )
    builder.register(origin, half, yaw)


def lamp(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    """Floor lamp: round foot, pole and a drum, globe or box shade."""
    rng = builder.rng
    metal = builder.material(("metal", "stone", "marble", "wood"), (0.3, 0.8))
    shade = builder.material(SOFT_KINDS + ("plaster", "painting"), (0.3, 0.8))
    height = rng.uniform(1.3, 1.7)
    builder.add_part(
        origin, yaw, (0, 0.015, 0), (0.15, 0.015, 0.15), metal, "lamp", shadow=0.3, shape="cylinder"
    )
    builder.add_part(
        origin,
        yaw,
        (0, height / 2, 0),
        (0.015, height / 2, 0.015),
        metal,
        "lamp",
        shadow=0.0,
        shape="cylinder",
    )
    shape = ("cylinder", "ellipsoid", "box")[int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
    builder.add_part(
        origin, yaw, (0, height + 0.12, 0), (0.18, 0.14, 0.18), shade, "lamp", shadow=0.0, shape=shape
    )
    builder.register(origin, half, yaw)


def round_table(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    """Round (or oval) top on a pedestal with a round foot; chairs around, things on top."""
    rng = builder.rng
    height = rng.uniform(0.7, 0.76)
    material = builder.material(WOOD_KINDS, (0.6, 1.5))
    top = (half[0], 0.02, half[1])
    builder.add_part(
        origin, yaw, (0, height - 0.02, 0), top, material, "table", shadow=0.35, shape="cylinder"
    )
    stem = rng.uniform(0.04, 0.08)
    builder.add_part(
        origin,
        yaw,
        (0, (height - 0.04) / 2, 0),
        (stem, (height - 0.04) / 2, stem),
        material,
        "table",
        shadow=0.0,
        shape="cylinder",
    )
    foot = min(half) * rng.uniform(0.4, 0.6)
    builder.add_part(
        origin, yaw, (0, 0.015, 0), (foot, 0.015, foot), material, "table", shadow=0.0, shape="cylinder"
    )
    builder.register(origin, half, yaw)
    inscribed = half / math.sqrt(2.0)
    builder.clutter_on(origin, yaw, height, inscribed[0], inscribed[1], int(rng.integers(0, 5)))
    chairs_around(builder, origin, yaw, half, int(rng.integers(0, 5)))


def plant(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    """A pot (cylinder) with foliage: a few overlapping ellipsoids, or a tall stem with a crown."""
    rng = builder.rng
    pot_radius = min(half) * rng.uniform(0.5, 0.75)
    pot_height = rng.uniform(0.2, 0.5)
    pot = builder.material(POT_KINDS, (0.3, 0.8), reuse=0.4)
    leaves = builder.material(("foliage",), (0.3, 0.8), reuse=0.5)
    builder.add_part(
        origin,
        yaw,
        (0, pot_height / 2, 0),
        (pot_radius, pot_height / 2, pot_radius),
        pot,
        "plant",
        shadow=0.4,
        shape="cylinder",
    )
    crown = pot_height
    if rng.random() < 0.4:  # a small tree: a stem, the crown higher up
        stem_height = rng.uniform(0.4, 0.9)
        builder.add_part(
            origin,
            yaw,
            (0, pot_height + stem_height / 2, 0),
            (0.02, stem_height / 2, 0.02),
            pot,
            "plant",
            shadow=0.0,
            shape="cylinder",
        )
        crown += stem_height
    for _ in range(int(rng.integers(2, 6))):
        radius = rng.uniform(0.5, 1.0) * min(half)
        tall = radius * rng.uniform(0.8, 1.8)
        x, z = rng.uniform(-0.3, 0.3, size=2) * min(half)
        builder.add_part(
            origin,
            yaw,
            (x, crown + tall * rng.uniform(0.6, 1.2), z),
            (radius, tall, radius * rng.uniform(0.7, 1.0)),
            leaves,
            "plant",
            obstacle=False,
            shadow=0.0,
            shape="ellipsoid",
            extra_yaw=rng.uniform(0, math.pi),
        )
    builder.register(origin, half, yaw)


def stool(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    """A stool or small side table: a round top on a stem or three legs, sometimes a vase or a bowl on it."""
    rng = builder.rng
    material = builder.material(WOOD_KINDS + SOFT_KINDS, (0.3, 0.8))
    height = rng.uniform(0.4, 0.75)
    radius = min(half)
    builder.add_part(
        origin,
        yaw,
        (0, height - 0.02, 0),
        (radius, 0.02, radius),
        material,
        "table",
        shadow=0.3,
        shape="cylinder",
    )
    if rng.random() < 0.5:
        builder.add_part(
            origin,
            yaw,
            (0, (height - 0.04) / 2, 0),
            (0.03, (height - 0.04) / 2, 0.03),
            material,
            "table",
            shadow=0.0,
            shape="cylinder",
        )
    else:
        for angle in (0.0, 2.1, 4.2):
            x, z = 0.7 * radius * math.cos(angle), 0.7 * radius * math.sin(angle)
            builder.add_part(
                origin,
                yaw,
                (x, (height - 0.04) / 2, z),
                (0.015, (height - 0.04) / 2, 0.015),
                material,
                "table",
                shadow=0.0,
                shape="cylinder",
            )
    builder.register(origin, half, yaw)
    builder.clutter_on(
        origin, yaw, height, radius / math.sqrt(2.0), radius / math.sqrt(2.0), int(rng.integers(0, 3))
    )


def floor_things(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    """Things left on the floor: baskets and bins (cylinders), balls (spheres), boxes and stacks of books."""
    rng = builder.rng
    for _ in range(int(rng.integers(1, 4))):
        shape = ("box", "cylinder", "ellipsoid")[int(rng.integers(3))]
        radius = rng.uniform(0.08, 0.9 * min(half))
        height = rng.uniform(0.1, 0.45) if shape != "ellipsoid" else radius * rng.uniform(0.8, 1.0)
        x, z = rng.uniform(-1.0, 1.0, size=2) * (half - radius)
        material = builder.material(CLUTTER_KINDS + POT_KINDS, (0.2, 0.8), reuse=0.5)
        builder.add_part(
            origin,
            yaw,
            (x, height if shape == "ellipsoid" else height / 2, z),
            (radius, height if shape == "ellipsoid" else height / 2, radius * rng.uniform(0.7, 1.0)),
            material,
            "clutter",
            shadow=0.4,
            shape=shape,
            extra_yaw=rng.uniform(0, math.pi),
        )
    builder.register(origin, half, yaw)


def crates(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    rng = builder.rng
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


def pillar(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    """A square pillar in the walls' material, or (half of them) a round one."""
    yaw = 0.0  # square to the walls, whatever yaw the free spot was found with
    shape = SHAPE_ID["cylinder"] if builder.rng.random() < 0.5 else SHAPE_ID["box"]
    builder.boxes.append(
        Box(
            (origin[0], builder.size[1] / 2, origin[1]),
            (half[0], builder.size[1] / 2, half[1]),
            yaw,
            builder.wall_material,
            CLASS_ID["wall"],
            True,
            0.4,
            shape,
        )
    )
    builder.register(origin, half, yaw)


def rug(builder: RoomBuilder) -> None:
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


def pictures(builder: RoomBuilder, count: int) -> None:
    """Pictures (one copy of a painting texture each), most of them framed, and round plates or mirrors (flat
    ellipsoids), on free stretches of wall."""
    rng, size = builder.rng, builder.size
    for _ in range(count):
        width, height = rng.uniform(0.3, 1.2), rng.uniform(0.3, 0.9)
        centre_y = rng.uniform(1.2, min(1.9, size[1] - height / 2 - 0.1))
        spot = builder.wall_spot(width, centre_y - height / 2, centre_y + height / 2)
        if spot is None:
            continue
        wall, along = spot
        depth = rng.uniform(0.01, 0.03)
        material = builder.painting_material(width, height)
        if rng.random() < 0.15:  # a round one
            radius = min(width, height) / 2
            builder.wall_part(
                wall, along, centre_y, radius, radius, 0.0, depth, material, "picture", shape="ellipsoid"
            )
            continue
        builder.wall_part(wall, along, centre_y, width / 2, height / 2, depth, depth, material, "picture")
        if rng.random() < 0.7:  # a frame: one board behind the canvas, a little larger and thinner
            frame = builder.material(("wood", "metal", "painting"), (0.2, 0.5), reuse=0.6)
            bar = rng.uniform(0.015, 0.06)
            builder.wall_part(
                wall,
                along,
                centre_y,
                width / 2 + bar,
                height / 2 + bar,
                0.6 * depth,
                0.6 * depth,
                frame,
                "picture",
            )


def doors(builder: RoomBuilder, count: int) -> None:
    """Closed doors on the walls: a leaf with a handle in a frame; the floor in front is kept clear."""
    rng = builder.rng
    for _ in range(count):
        width, height = rng.uniform(0.75, 0.95), min(rng.uniform(2.0, 2.15), builder.size[1] - 0.15)
        spot = builder.wall_spot(width + 0.2, 0.0, height + 0.1, margin=0.2)
        if spot is None:
            continue
        wall, along = spot
        leaf = builder.material(("wood", "wood", "painting", "plaster", "metal"), (0.8, 2.0))
        frame = builder.material(("wood", "plaster", "metal"), (0.5, 1.5), reuse=0.5)
        builder.wall_part(wall, along, height / 2, width / 2, height / 2, 0.025, 0.025, leaf, "door")
        bar = rng.uniform(0.04, 0.08)
        for sign in (-1, 1):
            builder.wall_part(
                wall,
                along + sign * (width / 2 + bar),
                height / 2 + bar / 2,
                bar,
                height / 2 + bar / 2,
                0.03,
                0.03,
                frame,
                "door",
            )
        builder.wall_part(wall, along, height + bar, width / 2, bar, 0.03, 0.03, frame, "door")
        knob = builder.material(("metal",), (0.1, 0.3), reuse=0.8)
        side = 1 if rng.random() < 0.5 else -1
        builder.wall_part(
            wall,
            along + side * (width / 2 - 0.08),
            1.0,
            0.035,
            0.035,
            0.07,
            0.035,
            knob,
            "door",
            shape="ellipsoid",
        )
        centre = builder.wall_point(wall, along, 0.5)
        half = np.array([width / 2 + 0.1, 0.5]) if wall < 2 else np.array([0.5, width / 2 + 0.1])
        builder.keep_out.append((centre, half, 0.0))


def windows(builder: RoomBuilder, count: int) -> None:
    """Windows: a pane showing a picture of the outside in a frame with mullions and a sill, sometimes
    curtains on both sides and a radiator below."""
    rng, size = builder.rng, builder.size
    for _ in range(count):
        width = rng.uniform(0.7, 1.8)
        bottom = rng.uniform(0.75, 1.0)
        top = min(rng.uniform(1.9, 2.3), size[1] - 0.2)
        curtains = rng.random() < 0.5
        spot = builder.wall_spot(width + (1.0 if curtains else 0.2), 0.0, top + 0.15)
        if spot is None:
            continue
        wall, along = spot
        height, centre_y = top - bottom, (top + bottom) / 2
        view = builder.material(VIEW_KINDS, (1.0, 3.0))
        frame = builder.material(("wood", "metal", "plaster"), (0.4, 1.2), reuse=0.5)
        builder.wall_part(wall, along, centre_y, width / 2, height / 2, 0.005, 0.005, view, "window")
        bar, deep = rng.uniform(0.03, 0.06), rng.uniform(0.04, 0.08)
        for sign in (-1, 1):
            builder.wall_part(
                wall,
                along,
                centre_y + sign * (height / 2 + bar),
                width / 2 + 2 * bar,
                bar,
                deep / 2,
                deep / 2,
                frame,
                "window",
            )
            builder.wall_part(
                wall,
                along + sign * (width / 2 + bar),
                centre_y,
                bar,
                height / 2,
                deep / 2,
                deep / 2,
                frame,
                "window",
            )
        mullion = bar * 0.6
        builder.wall_part(wall, along, centre_y, mullion, height / 2, deep / 4, deep / 4, frame, "window")
        if rng.random() < 0.5:
            builder.wall_part(wall, along, centre_y, width / 2, mullion, deep / 4, deep / 4, frame, "window")
        sill = rng.uniform(0.1, 0.25)
        builder.wall_part(
            wall, along, bottom - 2 * bar, width / 2 + 0.08, 0.02, sill / 2, sill / 2, frame, "window"
        )
        if curtains:
            cloth = builder.material(("fabric", "fabric", "wallpaper", "painting"), (0.4, 1.2))
            drop = rng.uniform(0.0, bottom - 0.05)
            panel = rng.uniform(0.2, 0.45)
            for sign in (-1, 1):
                builder.wall_part(
                    wall,
                    along + sign * (width / 2 + panel / 2 + 0.05),
                    (top + 0.15 + drop) / 2,
                    panel / 2,
                    (top + 0.15 - drop) / 2,
                    0.12,
                    rng.uniform(0.02, 0.05),
                    cloth,
                    "curtain",
                )
        elif rng.random() < 0.6 and bottom > 0.7:
            metal = builder.material(("metal", "plaster", "tiles"), (0.2, 0.6), reuse=0.6)
            fins = int(rng.integers(3, 7))
            length = min(width, rng.uniform(0.6, 1.2))
            builder.wall_part(wall, along, 0.4, length / 2, 0.25, 0.05, 0.03, metal, "fixture")
            for fin in range(fins):
                offset = (fin + 0.5) / fins * length - length / 2
                builder.wall_part(wall, along + offset, 0.4, 0.012, 0.26, 0.085, 0.012, metal, "fixture")


def wall_shelves(builder: RoomBuilder, count: int) -> None:
    """Shelves fixed to the wall, with things standing on them."""
    rng = builder.rng
    for _ in range(count):
        width, depth = rng.uniform(0.5, 1.3), rng.uniform(0.15, 0.28)
        y = rng.uniform(1.0, min(1.9, builder.size[1] - 0.5))
        spot = builder.wall_spot(width, y - 0.05, y + 0.4)
        if spot is None:
            continue
        wall, along = spot
        board = builder.material(WOOD_KINDS, (0.4, 1.0), reuse=0.5)
        builder.wall_part(wall, along, y, width / 2, 0.015, depth / 2, depth / 2, board, "shelf")
        # the things stand on the board: a local frame whose +z points into the room
        origin = builder.wall_point(wall, along, depth / 2)
        yaw = (0.0, math.pi, math.pi / 2, -math.pi / 2)[wall]
        builder.clutter_on(origin, yaw, y + 0.015, width / 2, depth / 2, int(rng.integers(1, 5)))


def pendant(builder: RoomBuilder, light: tuple[float, float, float]) -> None:
    """A shade (drum, globe or box) hanging on a cord just above a light, if it stays clear of the cameras."""
    rng = builder.rng
    radius = rng.uniform(0.12, 0.3)
    tall = rng.uniform(0.08, 0.2)
    bottom = light[1] + 0.03
    if bottom < 1.95 or bottom + 2 * tall > builder.size[1] - 0.08:
        return
    shade = builder.material(SOFT_KINDS + ("metal", "plaster", "painting"), (0.3, 0.8), reuse=0.5)
    shape = ("cylinder", "ellipsoid", "box")[int(rng.choice(3, p=[0.5, 0.4, 0.1]))]
    builder.boxes.append(
        Box(
            (light[0], bottom + tall, light[2]),
            (radius, tall, radius),
            0.0,
            shade,
            CLASS_ID["lamp"],
            False,
            0.0,
            SHAPE_ID[shape],
        )
    )
    cord = (builder.size[1] - bottom - 2 * tall) / 2
    builder.boxes.append(
        Box(
            (light[0], builder.size[1] - cord, light[2]),
            (0.008, cord, 0.008),
            0.0,
            shade,
            CLASS_ID["lamp"],
            False,
            0.0,
            SHAPE_ID["cylinder"],
        )
    )


PIECES: dict[str, Piece] = {  # name: footprint (half extents x, z), share against a wall, builder
    "table": Piece(lambda rng: np.array([rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.5)]), 0.3, table),
    "cabinet": Piece(lambda rng: np.array([rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.32)]), 1.0, cabinet),
    "bookcase": Piece(lambda rng: np.array([rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.2)]), 1.0, bookcase),
    "bed": Piece(lambda rng: np.array([rng.uniform(0.45, 0.95), rng.uniform(0.95, 1.05)]), 1.0, bed),
    "sofa": Piece(lambda rng: np.array([rng.uniform(0.75, 1.2), rng.uniform(0.4, 0.5)]), 0.7, sofa),
    "lamp": Piece(lambda rng: np.array([0.18, 0.18]), 0.0, lamp),
    "crates": Piece(lambda rng: np.array([rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4)]), 0.5, crates),
    "pillar": Piece(lambda rng: np.array([rng.uniform(0.15, 0.3)] * 2), 0.0, pillar),
    "round_table": Piece(
        lambda rng: np.array([rng.uniform(0.35, 0.6)] * 2) * [1.0, rng.uniform(0.7, 1.0)], 0.1, round_table
    ),
    "plant": Piece(lambda rng: np.array([rng.uniform(0.2, 0.45)] * 2), 0.6, plant),
    "stool": Piece(lambda rng: np.array([rng.uniform(0.15, 0.28)] * 2), 0.3, stool),
    "things": Piece(lambda rng: rng.uniform([0.2, 0.2], [0.45, 0.4]), 0.7, floor_things),
}
FURNITURE_DRAWS = (
    "table",
    "table",
    "round_table",
    "cabinet",
    "bookcase",
    "bed",
    "sofa",
    "lamp",
    "crates",
    "crates",
    "plant",
    "plant",
    "stool",
    "things",
    "things",
)
"""The furniture a room draws from, uniformly (repeats make tables and crates twice as frequent)."""
