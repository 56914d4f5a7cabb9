"""The furniture of the procedural rooms: each piece is boxes in its own frame (origin on the floor, a yaw).

A placed piece (``Piece``) draws its footprint (half extents in x and z), whether it stands against a wall, and
a free spot for it (``RoomBuilder.place_piece``), then ``build`` adds its boxes there and registers the
footprints that cameras and other pieces must keep clear of. Partitions, rugs and pictures follow the room's
shape rather than a free spot and are added directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from croco.synth.scene import CLASS_ID, Box, yaw_matrix

if TYPE_CHECKING:
    from croco.synth.room import RoomBuilder

FLOOR_KINDS = ("wood", "wood", "tiles", "carpet", "marble", "stone")
WALL_KINDS = ("plaster", "plaster", "wallpaper", "wallpaper", "brick", "stone", "tiles")
CEILING_KINDS = ("plaster", "stone")
WOOD_KINDS = ("wood", "wood", "marble", "stone", "plaster")
SOFT_KINDS = ("fabric", "carpet", "wallpaper")
CLUTTER_KINDS = ("wood", "fabric", "painting", "wallpaper", "stone", "marble", "carpet", "tiles")


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
            chair_parts(builder, chair_origin, chair_yaw, chair_material)


def chair_parts(builder: RoomBuilder, origin: np.ndarray, yaw: float, material: int) -> None:
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
            (min(0.3, half[0] / count - 0.05), 0.06, 0.18),
            pillow,
            "bed",
            obstacle=False,
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
    builder.register(origin, half, yaw)


def lamp(builder: RoomBuilder, origin: np.ndarray, yaw: float, half: np.ndarray) -> None:
    rng = builder.rng
    metal = builder.material(("stone", "marble", "wood"), (0.3, 0.8))
    shade = builder.material(SOFT_KINDS + ("plaster",), (0.3, 0.8))
    height = rng.uniform(1.3, 1.7)
    builder.add_part(origin, yaw, (0, 0.015, 0), (0.15, 0.015, 0.15), metal, "lamp", shadow=0.3)
    builder.add_part(origin, yaw, (0, height / 2, 0), (0.015, height / 2, 0.015), metal, "lamp", shadow=0.0)
    builder.add_part(origin, yaw, (0, height + 0.12, 0), (0.18, 0.14, 0.18), shade, "lamp", shadow=0.0)
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
    yaw = 0.0  # square to the walls, whatever yaw the free spot was found with
    builder.boxes.append(
        Box(
            (origin[0], builder.size[1] / 2, origin[1]),
            (half[0], builder.size[1] / 2, half[1]),
            yaw,
            builder.wall_material,
            CLASS_ID["wall"],
            True,
            0.4,
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


PIECES: dict[str, Piece] = {  # name: footprint (half extents x, z), share against a wall, builder
    "table": Piece(lambda rng: np.array([rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.5)]), 0.3, table),
    "cabinet": Piece(lambda rng: np.array([rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.32)]), 1.0, cabinet),
    "bookcase": Piece(lambda rng: np.array([rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.2)]), 1.0, bookcase),
    "bed": Piece(lambda rng: np.array([rng.uniform(0.45, 0.95), rng.uniform(0.95, 1.05)]), 1.0, bed),
    "sofa": Piece(lambda rng: np.array([rng.uniform(0.75, 1.2), rng.uniform(0.4, 0.5)]), 0.7, sofa),
    "lamp": Piece(lambda rng: np.array([0.18, 0.18]), 0.0, lamp),
    "crates": Piece(lambda rng: np.array([rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4)]), 0.5, crates),
    "pillar": Piece(lambda rng: np.array([rng.uniform(0.15, 0.3)] * 2), 0.0, pillar),
}
FURNITURE_DRAWS = ("table", "table", "cabinet", "bookcase", "bed", "sofa", "lamp", "crates", "crates")
"""The furniture a room draws from, uniformly (repeats make tables and crates twice as frequent)."""
