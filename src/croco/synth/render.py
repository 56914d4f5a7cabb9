"""Renderers: (scene, K, pose) -> RGB, metric z-depth and surface classes.

``Renderer`` is the interface every scene source implements (the CPU ray caster here for procedural rooms,
``croco.synth.habitat.HabitatRenderer`` for habitat-sim); the pair sampler, co-visibility and shard writing
only ever talk to it. Conventions are those of ``croco.geometry.cameras`` (world y up, OpenCV camera axes,
camera-to-world poses, depth = camera z, pixel centres at +0.5).

``CpuRenderer`` casts one ray per pixel against the room (the inside of a box: one exit face per ray) and
against every primitive: boxes by the slab test in their yawed frame, vertical elliptic cylinders and
ellipsoids by the closed-form quadratic (solved in float64 in the stable form, so grazing rays lose no
precision), intersected with the height slab for cylinders. To stay fast in numpy it only tests a primitive on
the screen rectangle its bounding box can cover (corners clipped against the near plane), so the work is about
the covered area rather than pixels × primitives. Hits are textured from the scene's mip-mapped atlas (level
from the pixel footprint; curved surfaces get per-pixel normals and a cylindrical or spherical mapping whose
wrap is a whole number of texture tiles), modulated by the material's macro layer (which hides texture
repeats) and lit by a view-independent model (ambient + Lambertian point lights with falloff + corner and
contact darkening), so the two views of a pair agree on the colour of every surface point. An optional
Blinn-Phong highlight (``specular`` > 0, scaled by each material's gloss) is the one view-dependent term.
Depth is exact (float32 ray parameter; rays are scaled so that the parameter equals the z-depth).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from croco.geometry.cameras import camera_rays
from croco.synth.scene import CLASS_ID, SHAPE_ID, Scene

_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Keep freed numpy temporaries in the heap instead of returning them to the OS after every call.

    A 256x256 render allocates a few hundred 256-512 KiB temporaries; glibc serves blocks of that size with
    mmap and trims the heap on free, so every one of them page-faults again: measured here, that kernel time
    was ~60 % of a render. Raising glibc's mmap threshold to 8 MiB and its trim threshold to 128 MiB (with a
    16 MiB top pad) removes it, at the cost of the process keeping a few tens of MiB it no longer uses.
    Process-wide and idempotent; a no-op (returns False) where glibc's ``mallopt`` is not available.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    _ALLOCATOR_TUNED = bool(
        mallopt(m_mmap_threshold, 8 << 20)
        and mallopt(m_trim_threshold, 128 << 20)
        and mallopt(m_top_pad, 16 << 20)
    )
    return _ALLOCATOR_TUNED


class SceneUnusable(RuntimeError):
    """A scene that cannot give a pair (no navmesh, nothing in the overlap range): the generator skips it,
    counts it and moves on to the next scene."""


class Rendering(NamedTuple):
    """One rendered view: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) float32 z-depth in metres (0 = invalid),
    ``semantics`` (H, W) uint8 surface class (``croco.synth.scene.SURFACE_CLASSES``) or None."""

    rgb: np.ndarray
    depth: np.ndarray
    semantics: np.ndarray | None = None


class Renderer(abc.ABC):
    """Renders views of a scene at a fixed resolution ``(height, width)``."""

    resolution: tuple[int, int]

    @abc.abstractmethod
    def render(self, scene, K: np.ndarray, pose: np.ndarray) -> Rendering:
        """Render the view with intrinsics ``K`` (3x3) and camera-to-world ``pose`` (4x4, OpenCV axes)."""

    def render_depth(self, scene, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Only the (H, W) float32 depth; backends override it when depth alone is cheaper."""
        return self.render(scene, K, pose).depth

    def render_geometry(self, scene, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(depth, surface classes or None) without the colours; backends override it when that is cheaper."""
        view = self.render(scene, K, pose)
        return view.depth, view.semantics

    def close(self) -> None:
        """Release backend resources (no-op by default)."""


_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if (a ^ b).bit_count() == 1])
NEAR = 1e-3
TONE_SLOPE = 1.4
"""Slope of the tone curve 255 * (1 - exp(-TONE_SLOPE * radiance)) at zero (radiance 1 = albedo under unit
light)."""


def _box_screen_rects(
    scene: Scene, K: np.ndarray, world_to_camera: np.ndarray, height: int, width: int
) -> np.ndarray:
    """(B, 4) int rectangles [row0, row1, col0, col1) that contain each box's projection (empty if invisible).

    The box corners are projected; edges crossing the near plane contribute their crossing point, so boxes
    that straddle the camera plane get a correct (if large) rectangle instead of a wrong one.
    """
    count = scene.box_count
    if count == 0:
        return np.zeros((0, 4), dtype=np.int64)
    cos, sin = np.cos(scene.yaws), np.sin(scene.yaws)
    local = _CORNERS[None, :, :] * scene.halves[:, None, :]
    world = np.empty_like(local)
    world[..., 0] = cos[:, None] * local[..., 0] + sin[:, None] * local[..., 2]
    world[..., 1] = local[..., 1]
    world[..., 2] = -sin[:, None] * local[..., 0] + cos[:, None] * local[..., 2]
    world += scene.centres[:, None, :]
    camera = world @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]  # (B, 8, 3)
    a, b = camera[:, _EDGES[:, 0]], camera[:, _EDGES[:, 1]]  # (B, 12, 3)
    za, zb = a[..., 2], b[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (NEAR - za) / (zb - za)
    crossing = ((za - NEAR) * (zb - NEAR) < 0) & np.isfinite(s)
    clipped = a + np.where(crossing, s, 0.0)[..., None] * (b - a)
    points = np.concatenate([camera, clipped], axis=1)  # (B, 20, 3)
    usable = np.concatenate([camera[..., 2] > NEAR, crossing], axis=1)
    z = np.maximum(points[..., 2], NEAR)
    u = K[0, 0] * points[..., 0] / z + K[0, 1] * points[..., 1] / z + K[0, 2]
    v = K[1, 1] * points[..., 1] / z + K[1, 2]
    big = 1e9
    u_min = np.where(usable, u, big).min(axis=1)
    u_max = np.where(usable, u, -big).max(axis=1)
    v_min = np.where(usable, v, big).min(axis=1)
    v_max = np.where(usable, v, -big).max(axis=1)
    rects = np.stack(
        [
            np.clip(np.floor(v_min) - 1, 0, height),
            np.clip(np.ceil(v_max) + 1, 0, height),
            np.clip(np.floor(u_min) - 1, 0, width),
            np.clip(np.ceil(u_max) + 1, 0, width),
        ],
        axis=1,
    ).astype(np.int64)
    rects[~usable.any(axis=1)] = 0
    return rects


# Columns of the per-face table (one row per room face, then six per box: face = 6 + 6*box + 2*axis + side).
_N_X, _N_Y, _N_Z = 0, 1, 2  # outward (towards the viewer) unit normal
_U_X, _U_Y, _U_Z, _U_0 = 3, 4, 5, 6  # texel u = U . p + U_0 (density and offset folded in)
_V_X, _V_Y, _V_Z, _V_0 = 7, 8, 9, 10
_DENSITY, _TEXTURE, _SEMANTIC, _ROOM_AXIS = 11, 12, 13, 14  # room axis is -1 for box faces
_CURVED = 15  # 0: planar face, 1: cylinder side, 2: ellipsoid (normal and mapping computed per pixel)
_MACRO_TEXTURE, _MACRO_RATIO, _MACRO_U0, _MACRO_V0, _MACRO_STRENGTH, _MACRO_SHIFT = 16, 17, 18, 19, 20, 21
_TINT_R, _TINT_G, _TINT_B, _GLOSS = 22, 23, 24, 25
_COLUMNS = 26
# Rows of the curved-surface table (columns = faces; zero for planar faces).
_C_X, _C_Y, _C_Z, _C_COS, _C_SIN, _C_HX, _C_HY, _C_HZ, _C_USCALE, _C_VSCALE, _C_U0, _C_V0 = range(12)
_CURVED_ROWS = 12
_U_AXIS = (2, 0, 0)  # face axis -> axis measured by u (x-faces: z, floor/ceiling: x, z-faces: x)
_V_AXIS = (1, 2, 1)  # face axis -> axis measured by v (x-faces: y, floor/ceiling: z, z-faces: y)


def _material_columns(scene: Scene, table: np.ndarray, faces: np.ndarray, materials: np.ndarray) -> None:
    """Texture, density, macro layer, tint and gloss columns of ``faces`` from their ``materials``."""
    macro = scene.material_macro[materials].astype(np.float64)
    ratio = macro[:, 1]
    table[_DENSITY, faces] = scene.material_density[materials].max(axis=1)
    table[_TEXTURE, faces] = scene.material_textures[materials]
    table[_MACRO_TEXTURE, faces] = np.maximum(macro[:, 0], 0.0)
    table[_MACRO_RATIO, faces] = ratio
    table[_MACRO_U0, faces] = macro[:, 2]
    table[_MACRO_V0, faces] = macro[:, 3]
    table[_MACRO_STRENGTH, faces] = np.where(macro[:, 0] >= 0, macro[:, 4], 0.0)
    # the macro texture is read ~1/ratio times coarser: that many mip levels less
    with np.errstate(divide="ignore"):
        table[_MACRO_SHIFT, faces] = np.where(ratio > 0, np.maximum(np.round(-np.log2(ratio)), 0.0), 0.0)
    table[_TINT_R : _TINT_B + 1, faces] = scene.material_tint[materials].T
    table[_GLOSS, faces] = macro[:, 5]


def face_table(scene: Scene) -> np.ndarray:
    """(COLUMNS, 6 + 6B) float64 table of every face's normal, texture mapping, texture, class, macro layer
    and gloss (cached). A curved primitive uses face slot 0 for its curved surface (``_CURVED`` > 0; the
    normal and mapping columns are then replaced per pixel from ``curved_table``) and a cylinder slots 2 and 3
    for its flat bottom and top."""
    cached = scene.cache.get("cpu_face_table")
    if cached is not None:
        return cached
    count = scene.box_count
    table = np.zeros((_COLUMNS, 6 + 6 * count), dtype=np.float64)
    for face in range(6):
        axis, positive = divmod(face, 2)
        material = scene.room_materials[face]
        density = scene.material_density[material]
        offset = scene.material_offset[material]
        table[_N_X + axis, face] = -1.0 if positive else 1.0  # the face at L_axis looks towards -axis
        table[_U_X + _U_AXIS[axis], face] = density[0]
        table[_U_0, face] = offset[0]
        table[_V_X + _V_AXIS[axis], face] = density[1]
        table[_V_0, face] = offset[1]
        table[_SEMANTIC, face] = (
            CLASS_ID["wall"] if axis != 1 else CLASS_ID["ceiling" if positive else "floor"]
        )
        table[_ROOM_AXIS, face] = axis
    _material_columns(scene, table, np.arange(6), scene.room_materials)
    if count:
        cos, sin = np.cos(scene.yaws), np.sin(scene.yaws)
        zero, one = np.zeros(count), np.ones(count)
        # columns of yaw_matrix: the box's local x, y, z axes in the world, (B, 3) each
        local_axes = (
            np.stack([cos, zero, -sin], 1),
            np.stack([zero, one, zero], 1),
            np.stack([sin, zero, cos], 1),
        )
        materials = scene.box_materials
        density = scene.material_density[materials].astype(np.float64)
        offset = scene.material_offset[materials].astype(np.float64)
        centre, half = scene.centres, scene.halves
        for axis in range(3):
            u_dir, v_dir = local_axes[_U_AXIS[axis]], local_axes[_V_AXIS[axis]]
            for positive in (0, 1):
                faces = 6 + 6 * np.arange(count) + 2 * axis + positive
                table[_N_X : _N_Z + 1, faces] = (local_axes[axis] * (1.0 if positive else -1.0)).T
                # u, v measure the local coordinates from the box corner: u = (R e_u) . (p - c) + h_u
                table[_U_X : _U_Z + 1, faces] = (density[:, :1] * u_dir).T
                table[_U_0, faces] = (
                    density[:, 0] * (half[:, _U_AXIS[axis]] - np.sum(u_dir * centre, 1)) + offset[:, 0]
                )
                table[_V_X : _V_Z + 1, faces] = (density[:, 1:] * v_dir).T
                table[_V_0, faces] = (
                    density[:, 1] * (half[:, _V_AXIS[axis]] - np.sum(v_dir * centre, 1)) + offset[:, 1]
                )
                table[_SEMANTIC, faces] = scene.box_semantics
                table[_ROOM_AXIS, faces] = -1
                _material_columns(scene, table, faces, materials)
        curved = np.flatnonzero(scene.shapes != SHAPE_ID["box"])
        table[_CURVED, 6 + 6 * curved] = scene.shapes[curved]
    scene.cache["cpu_face_table"] = table
    return table


def curved_table(scene: Scene) -> np.ndarray:
    """(12, 6 + 6B) float64 per-face parameters of curved surfaces (cached): centre, yaw cosine and sine, half
    extents, and the texture mapping u = angle * USCALE + U0, v = (height from the bottom, cylinders; polar
    angle from the bottom, ellipsoids) * VSCALE + V0.

    The angle around the y axis spans a whole number of texture tiles, so the mapping has no seam.
    """
    cached = scene.cache.get("cpu_curved_table")
    if cached is not None:
        return cached
    table = np.zeros((_CURVED_ROWS, 6 + 6 * scene.box_count), dtype=np.float64)
    size = scene.atlas.size
    for box in np.flatnonzero(scene.shapes != SHAPE_ID["box"]):
        face = 6 + 6 * int(box)
        half = scene.halves[box]
        material = scene.box_materials[box]
        density = scene.material_density[material].astype(np.float64)
        offset = scene.material_offset[material].astype(np.float64)
        radius = 0.5 * (half[0] + half[2])
        tiles = max(1, round(2.0 * np.pi * radius * density[0] / size))
        vertical = density[1] if scene.shapes[box] == SHAPE_ID["cylinder"] else density[1] * half[1]
        table[_C_X : _C_Z + 1, face] = scene.centres[box]
        table[_C_COS, face], table[_C_SIN, face] = np.cos(scene.yaws[box]), np.sin(scene.yaws[box])
        table[_C_HX : _C_HZ + 1, face] = half
        table[_C_USCALE, face] = tiles * size / (2.0 * np.pi)
        table[_C_VSCALE, face] = vertical
        table[_C_U0, face], table[_C_V0, face] = offset
    scene.cache["cpu_curved_table"] = table
    return table


SMALL_WINDOW = 1024
"""Primitives whose screen window has at most this many pixels are intersected together in one vectorised
pass (``_cast_batch``): below that, numpy's per-call overhead costs more than the pixels."""


def _slab(origin: tuple, directions: tuple, half: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slab test in a box's frame (float32 directions): (t_enter, t_leave, entry face slot)."""
    nears = []
    t_enter = t_leave = None
    for axis in range(3):
        inverse = np.float32(1.0) / directions[axis]
        t_low = np.asarray(-half[axis] - origin[axis]).astype(np.float32) * inverse
        t_high = np.asarray(half[axis] - origin[axis]).astype(np.float32) * inverse
        near, far = np.minimum(t_low, t_high), np.maximum(t_low, t_high)
        nears.append(near)
        t_enter = near if t_enter is None else np.maximum(t_enter, near)
        t_leave = far if t_leave is None else np.minimum(t_leave, far)
    axis = np.where(nears[0] == t_enter, 0, np.where(nears[1] == t_enter, 1, 2))
    direction = np.choose(axis, directions)
    return t_enter, t_leave, 2 * axis + (direction < 0)  # entering against the direction: the + face


def _local_ray(
    scene: Scene, index: int | np.ndarray, origin: np.ndarray, directions: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Origin and float64 directions of rays in the frame of primitive ``index`` (one, or one per ray), scaled
    by its half extents (the primitive becomes the unit cylinder or sphere)."""
    yaw = scene.yaws[index]
    cos, sin = np.cos(yaw), np.sin(yaw)
    relative = (origin - scene.centres[index]).T
    half = scene.halves[index].T
    # world -> local for a yaw about y: x_l = c*x - s*z, z_l = s*x + c*z
    local_origin = [
        (cos * relative[0] - sin * relative[2]) / half[0],
        relative[1] / half[1],
        (sin * relative[0] + cos * relative[2]) / half[2],
    ]
    dx, dy, dz = (d.astype(np.float64) for d in directions)
    local = [(cos * dx - sin * dz) / half[0], dy / half[1], (sin * dx + cos * dz) / half[2]]
    return local_origin, local


def _near_root(a: np.ndarray, half_b: np.ndarray, c: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(near, far) roots of a t^2 + 2 half_b t + c = 0 (NaN where none), in the cancellation-free form."""
    discriminant = half_b * half_b - a * c
    root = np.sqrt(np.maximum(discriminant, 0.0))
    q = -(half_b + np.copysign(root, half_b))
    first, second = q / a, c / q
    none = discriminant < 0
    near = np.where(none, np.nan, np.minimum(first, second))
    far = np.where(none, np.nan, np.maximum(first, second))
    return near, far


def _cylinder_hits(origin: list, directions: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_enter, face slot, hit) of rays and the unit vertical cylinder |y| <= 1, x^2 + z^2 <= 1 (scaled
    frame): the side quadric intersected with the height slab; the side is slot 0, the bottom and top 2, 3."""
    (ox, oy, oz), (dx, dy, dz) = origin, directions
    a = dx * dx + dz * dz
    side_near, side_far = _near_root(a, ox * dx + oz * dz, ox * ox + oz * oz - 1.0)
    vertical = a < 1e-18  # a ray along the axis: inside the circle for every t, or never
    inside = ox * ox + oz * oz <= 1.0
    side_near = np.where(vertical, np.where(inside, -np.inf, np.nan), side_near)
    side_far = np.where(vertical, np.where(inside, np.inf, np.nan), side_far)
    slab_low, slab_high = (-1.0 - oy) / dy, (1.0 - oy) / dy
    slab_near, slab_far = np.minimum(slab_low, slab_high), np.maximum(slab_low, slab_high)
    enter = np.maximum(side_near, slab_near)
    hit = (enter <= np.minimum(side_far, slab_far)) & (enter > NEAR)
    slot = np.where(side_near >= slab_near, 0, np.where(dy < 0, 3, 2))  # falling onto the top: the +y cap
    return enter, slot, hit


def _ellipsoid_hits(origin: list, directions: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_enter, face slot 0, hit) of rays and the unit sphere (the ellipsoid in its scaled frame)."""
    (ox, oy, oz), (dx, dy, dz) = origin, directions
    a = dx * dx + dy * dy + dz * dz
    near, _ = _near_root(a, ox * dx + oy * dy + oz * dz, ox * ox + oy * oy + oz * oz - 1.0)
    return near, np.zeros(near.shape, dtype=np.int64), near > NEAR


def _cast_curved(
    hits: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]],
    scene: Scene,
    index: int,
    origin: np.ndarray,
    directions: list[np.ndarray],
    t: np.ndarray,
    face: np.ndarray,
) -> None:
    """Ray / curved shape on a screen window; ``hits`` is ``_cylinder_hits`` or ``_ellipsoid_hits`` (an ellipsoid
    has one face slot). Updates the depth and face buffers where the shape is nearer."""
    enter, slot, hit = hits(*_local_ray(scene, index, origin, directions))
    hit &= enter < t
    if hit.any():
        t[hit] = enter[hit].astype(np.float32)
        face[hit] = 6 + 6 * index + slot[hit]


def _cast_batch(
    scene: Scene,
    indices: np.ndarray,
    rects: np.ndarray,
    origin: np.ndarray,
    directions: list[np.ndarray],
    t: np.ndarray,
    face: np.ndarray,
) -> None:
    """Intersect many small-window primitives at once: one element per (primitive, pixel of its window), the
    same per-shape arithmetic as the one-primitive paths with per-element parameters, then the nearest hit per
    pixel (ties to the lower face id) replaces the buffers' where it is nearer."""
    width = t.shape[1]
    sides = rects[:, 3] - rects[:, 2]
    sizes = (rects[:, 1] - rects[:, 0]) * sides
    element_primitive = np.repeat(indices, sizes)
    offset = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    side = np.repeat(sides, sizes)
    pixels = (
        (np.repeat(rects[:, 0], sizes) + offset // side) * width
        + np.repeat(rects[:, 2], sizes)
        + offset % side
    )
    flat_t, flat_face = t.reshape(-1), face.reshape(-1)
    shapes = scene.shapes[element_primitive]
    candidates = []
    for shape in np.unique(shapes):
        chosen = np.flatnonzero(shapes == shape)
        primitive = element_primitive[chosen]
        ray = [np.take(d.reshape(-1), pixels[chosen]) for d in directions]
        if shape == SHAPE_ID["box"]:
            yaw = scene.yaws[primitive]
            cos, sin = np.cos(yaw).astype(np.float32), np.sin(yaw).astype(np.float32)
            relative = origin - scene.centres[primitive]
            local_origin = (
                cos * relative[:, 0] - sin * relative[:, 2],
                relative[:, 1],
                sin * relative[:, 0] + cos * relative[:, 2],
            )
            local = (cos * ray[0] - sin * ray[2], ray[1], sin * ray[0] + cos * ray[2])
            half = scene.halves[primitive].T
            enter, leave, slot = _slab(local_origin, local, (half[0], half[1], half[2]))
            hit = (enter <= leave) & (enter > NEAR)
        else:
            hits = _cylinder_hits if shape == SHAPE_ID["cylinder"] else _ellipsoid_hits
            enter, slot, hit = hits(*_local_ray(scene, primitive, origin, ray))
            enter = enter.astype(np.float32)
        keep = np.flatnonzero(hit)
        candidates.append((pixels[chosen][keep], enter[keep], 6 + 6 * primitive[keep] + slot[keep]))
    pixel, depth, faces = (np.concatenate(parts) for parts in zip(*candidates))
    order = np.lexsort((faces, depth, pixel))  # per pixel: nearest first, then the lower face id
    pixel, depth, faces = pixel[order], depth[order], faces[order]
    first = np.ones(len(pixel), dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    pixel, depth, faces = pixel[first], depth[first], faces[first]
    nearer = depth < np.take(flat_t, pixel)
    flat_t[pixel[nearer]] = depth[nearer]
    flat_face[pixel[nearer]] = faces[nearer]


class CpuRenderer(Renderer):
    """Vectorised numpy ray caster for ``croco.synth.scene.Scene`` rooms.

    Works on flat per-pixel arrays (structure of arrays, float32) and one face id per pixel; every per-surface
    quantity comes from ``face_table`` by a 1-D gather. ``semantics=False`` skips the class map. ``specular``
    (default 0: off) is the strength of a Blinn-Phong highlight scaled by each material's gloss: the only
    view-dependent part of the shading. Deterministic and single-threaded (parallelise over processes).
    """

    SHININESS = 24.0
    """Blinn-Phong exponent of the optional highlight (a broad sheen, as on waxed wood or glazed tiles)."""

    def __init__(
        self,
        height: int = 256,
        width: int | None = None,
        *,
        semantics: bool = True,
        mip_bias: float = 0.0,
        specular: float = 0.0,
    ) -> None:
        width = height if width is None else width
        if height <= 0 or width <= 0:
            raise ValueError(f"render resolution must be positive, got {height}x{width}")
        if specular < 0:
            raise ValueError(f"specular must be >= 0, got {specular}")
        self.resolution = (int(height), int(width))
        self.semantics = semantics
        self.mip_bias = float(mip_bias)
        self.specular = float(specular)
        tune_allocator()
        self._rays_key: bytes | None = None
        self._rays: tuple[np.ndarray, np.ndarray] | None = None

    def _camera_rays(self, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = K.tobytes()
        if key != self._rays_key:
            rays = camera_rays(K, *self.resolution)
            self._rays = (np.ascontiguousarray(rays[..., 0]), np.ascontiguousarray(rays[..., 1]))
            self._rays_key = key
        assert self._rays is not None
        return self._rays

    def render(self, scene: Scene, K: np.ndarray, pose: np.ndarray) -> Rendering:
        origin, directions, depth, valid, face = self._cast(scene, K, pose)
        rgb, semantics = self._shade(scene, K, origin, directions, depth, valid, face)
        return Rendering(rgb, depth, semantics)

    def render_depth(self, scene: Scene, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Depth only: the ray casting without texturing and lighting (screening candidate views)."""
        return self._cast(scene, K, pose)[2]

    def render_geometry(self, scene: Scene, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(depth, surface classes) without texturing and lighting: the classes are one gather of the face ids
        the ray casting finds anyway, so screening a view for structure costs no more than for depth."""
        _, _, depth, valid, face = self._cast(scene, K, pose)
        semantics = np.take(face_table(scene)[_SEMANTIC].astype(np.uint8), face)
        semantics[~valid] = 0
        return depth, semantics

    def _cast(
        self, scene: Scene, K: np.ndarray, pose: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """(origin, world ray planes, depth, valid mask, face id) of every pixel."""
        if not isinstance(scene, Scene):
            raise TypeError(f"CpuRenderer renders croco.synth.scene.Scene, got {type(scene).__name__}")
        K = np.asarray(K, dtype=np.float64)
        pose = np.asarray(pose, dtype=np.float64)
        if K.shape != (3, 3) or pose.shape != (4, 4):
            raise ValueError(f"K must be 3x3 and pose 4x4, got {K.shape} and {pose.shape}")
        height, width = self.resolution
        rotation = pose[:3, :3].astype(np.float32)
        origin = pose[:3, 3]
        ray_x, ray_y = self._camera_rays(K)  # camera frame, z = 1: the ray parameter is the depth
        directions = [ray_x * rotation[i, 0] + ray_y * rotation[i, 1] + rotation[i, 2] for i in range(3)]

        # Room: from inside [0, L], each axis is left at max((L - o) / d, -o / d); the ray exits at the
        # minimum over the axes, through the face on the side the ray is heading to.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            exits = []
            for axis in range(3):
                inverse = np.float32(1.0) / directions[axis]
                exits.append(
                    np.maximum(
                        np.float32(scene.size[axis] - origin[axis]) * inverse,
                        np.float32(-origin[axis]) * inverse,
                    )
                )
            y_first = exits[1] < exits[0]
            t = np.minimum(exits[0], exits[1])
            z_first = exits[2] < t
            np.minimum(t, exits[2], out=t)
            # axis = 2 if z first else (1 if y before x else 0)
            axis = np.where(z_first, np.int64(2), y_first.astype(np.int64))
            heading_up = np.where(
                z_first, directions[2] > 0, np.where(y_first, directions[1] > 0, directions[0] > 0)
            )
            face = 2 * axis + heading_up
            rects = _box_screen_rects(scene, K, np.linalg.inv(pose), height, width)
            area = (rects[:, 1] - rects[:, 0]) * (rects[:, 3] - rects[:, 2])
            seen = (rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2])
            cast = {
                SHAPE_ID["box"]: self._cast_box,
                SHAPE_ID["cylinder"]: functools.partial(_cast_curved, _cylinder_hits),
            }
            ellipsoid = functools.partial(_cast_curved, _ellipsoid_hits)
            for index in np.flatnonzero(seen & (area > SMALL_WINDOW)):
                r0, r1, c0, c1 = rects[index]
                window = (slice(r0, r1), slice(c0, c1))
                cast.get(int(scene.shapes[index]), ellipsoid)(
                    scene, int(index), origin, [d[window] for d in directions], t[window], face[window]
                )
            small = np.flatnonzero(seen & (area <= SMALL_WINDOW))
            if small.size:
                _cast_batch(scene, small, rects[small], origin, directions, t, face)

        valid = np.isfinite(t) & (t > 0)
        depth = np.where(valid, t, np.float32(0.0)).astype(np.float32)
        return origin, directions, depth, valid, face

    @staticmethod
    def _cast_box(
        scene: Scene,
        index: int,
        origin: np.ndarray,
        directions: list[np.ndarray],
        t: np.ndarray,
        face: np.ndarray,
    ) -> None:
        """Slab test of one box on a screen window; updates the nearest-hit depth and face buffers."""
        yaw = scene.yaws[index]
        cos, sin = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
        relative = origin - scene.centres[index]
        # world -> local for a yaw about y: x_l = c*x - s*z, z_l = s*x + c*z
        local_origin = (
            cos * relative[0] - sin * relative[2],
            relative[1],
            sin * relative[0] + cos * relative[2],
        )
        dx, dy, dz = directions
        local_dirs = (cos * dx - sin * dz, dy, sin * dx + cos * dz)
        t_enter, t_leave, slot = _slab(local_origin, local_dirs, tuple(scene.halves[index]))
        hit = (t_enter <= t_leave) & (t_enter > NEAR) & (t_enter < t)
        if hit.any():
            t[hit] = t_enter[hit]
            face[hit] = 6 + 6 * index + slot[hit]

    def _shade(
        self,
        scene: Scene,
        K: np.ndarray,
        origin: np.ndarray,
        directions: list[np.ndarray],
        depth: np.ndarray,
        valid: np.ndarray,
        face: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        height, width = self.resolution
        table = face_table(scene).astype(np.float32)
        faces = face.reshape(-1)
        names = (
            "nx",
            "ny",
            "nz",
            "ux",
            "uy",
            "uz",
            "u0",
            "vx",
            "vy",
            "vz",
            "v0",
            "density",
            "texture",
            "axis",
        )
        indices = (
            _N_X,
            _N_Y,
            _N_Z,
            _U_X,
            _U_Y,
            _U_Z,
            _U_0,
            _V_X,
            _V_Y,
            _V_Z,
            _V_0,
            _DENSITY,
            _TEXTURE,
            _ROOM_AXIS,
        )
        column = {name: np.take(table[index], faces) for name, index in zip(names, indices)}
        t = depth.reshape(-1)
        dx, dy, dz = (d.reshape(-1) for d in directions)
        px = np.float32(origin[0]) + dx * t
        py = np.float32(origin[1]) + dy * t
        pz = np.float32(origin[2]) + dz * t

        texel_u = column["ux"] * px + column["uy"] * py + column["uz"] * pz + column["u0"]
        texel_v = column["vx"] * px + column["vy"] * py + column["vz"] * pz + column["v0"]
        if np.any(scene.shapes != SHAPE_ID["box"]):
            self._curved_surfaces(scene, table, faces, (px, py, pz), column, texel_u, texel_v)
        nx, ny, nz = column["nx"], column["ny"], column["nz"]
        ray_length = np.sqrt(dx * dx + dy * dy + dz * dz)
        cosine = np.abs(dx * nx + dy * ny + dz * nz) / ray_length
        footprint = (
            (t * ray_length)
            * (column["density"] / np.float32(K[0, 0]))
            / np.sqrt(np.maximum(cosine, np.float32(0.05)))
        )
        # floor(log2(footprint)) straight from the float32 exponent bits (footprint >= 1 is a normal number)
        footprint = np.maximum(footprint * np.float32(2.0**self.mip_bias), np.float32(1.0))
        level = (footprint.view(np.uint32) >> np.uint32(23)).astype(np.int32) - np.int32(127)
        albedo = scene.atlas.sample(column["texture"].astype(np.int32), texel_u, texel_v, level)
        if np.any(table[_MACRO_STRENGTH] > 0):
            self._macro_layer(scene, table, faces, texel_u, texel_v, level, albedo)

        irradiance = self._lighting(scene, px, py, pz, nx, ny, nz, column["axis"])
        radiance = [a * e for a, e in zip(albedo, irradiance)]
        if self.specular > 0 and np.any(table[_GLOSS] > 0):
            gloss = np.take(table[_GLOSS], faces) * np.float32(255.0 * self.specular)
            highlight = self._highlight(scene, (px, py, pz), (nx, ny, nz), (dx, dy, dz), ray_length)
            radiance = [r + gloss * h for r, h in zip(radiance, highlight)]
        # Filmic-style tone curve 1 - exp(-k x): near-linear in the shadows, highlights roll off instead of
        # clipping to flat white next to a lamp.
        gain = np.float32(-scene.exposure * TONE_SLOPE / 255.0)
        rgb = np.stack(
            [np.float32(255.5) - np.float32(255.0) * np.exp(r * gain) for r in radiance], axis=-1
        ).astype(np.uint8)
        flat_valid = valid.reshape(-1)
        all_valid = bool(flat_valid.all())  # always, inside a closed room
        if not all_valid:
            rgb[~flat_valid] = 0
        semantics = None
        if self.semantics:
            semantics = np.take(table[_SEMANTIC], faces).astype(np.uint8)
            if not all_valid:
                semantics[~flat_valid] = 0
            semantics = semantics.reshape(height, width)
        return rgb.reshape(height, width, 3), semantics

    @staticmethod
    def _curved_surfaces(
        scene: Scene,
        table: np.ndarray,
        faces: np.ndarray,
        points: tuple[np.ndarray, np.ndarray, np.ndarray],
        column: dict[str, np.ndarray],
        texel_u: np.ndarray,
        texel_v: np.ndarray,
    ) -> None:
        """Per-pixel normals and texel coordinates of the pixels on cylinder sides and ellipsoids (in place).

        The normal of the unit quadric in the scaled frame is the scaled point; back in the local frame it is
        divided by the half extents once more (gradient of sum (x_i / h_i)^2).
        """
        kind = np.take(table[_CURVED], faces)
        pixels = np.flatnonzero(kind > 0)
        if pixels.size == 0:
            return
        params = np.take(curved_table(scene), faces[pixels], axis=1)
        cylinder = kind[pixels] == SHAPE_ID["cylinder"]
        rx, ry, rz = (
            p[pixels].astype(np.float64) - params[row] for p, row in zip(points, (_C_X, _C_Y, _C_Z))
        )
        cos, sin = params[_C_COS], params[_C_SIN]
        hx, hy, hz = params[_C_HX], params[_C_HY], params[_C_HZ]
        x, y, z = (cos * rx - sin * rz) / hx, ry / hy, (sin * rx + cos * rz) / hz  # unit-quadric coordinates
        normal_x, normal_y, normal_z = x / hx, np.where(cylinder, 0.0, y / hy), z / hz
        norm = np.sqrt(normal_x * normal_x + normal_y * normal_y + normal_z * normal_z)
        normal_x, normal_y, normal_z = normal_x / norm, normal_y / norm, normal_z / norm
        # local -> world for a yaw about y: x = c*x_l + s*z_l, z = -s*x_l + c*z_l
        column["nx"][pixels] = cos * normal_x + sin * normal_z
        column["ny"][pixels] = normal_y
        column["nz"][pixels] = -sin * normal_x + cos * normal_z
        angle = np.arctan2(z, x)
        height = np.where(cylinder, y + 1.0, np.arccos(np.clip(-y, -1.0, 1.0)))
        height = np.where(cylinder, height * hy, height)
        texel_u[pixels] = angle * params[_C_USCALE] + params[_C_U0]
        texel_v[pixels] = height * params[_C_VSCALE] + params[_C_V0]

    @staticmethod
    def _macro_layer(
        scene: Scene,
        table: np.ndarray,
        faces: np.ndarray,
        texel_u: np.ndarray,
        texel_v: np.ndarray,
        level: np.ndarray,
        albedo: list[np.ndarray],
    ) -> None:
        """Multiply the albedo (in place) by the material's macro layer: 1 + strength (2 m - 1) tint."""
        ratio = np.take(table[_MACRO_RATIO], faces)
        macro_u = texel_u * ratio + np.take(table[_MACRO_U0], faces)
        macro_v = texel_v * ratio + np.take(table[_MACRO_V0], faces)
        macro_level = np.maximum(level - np.take(table[_MACRO_SHIFT], faces).astype(np.int32), 0)
        grey = scene.atlas.sample_channel(
            np.take(table[_MACRO_TEXTURE], faces).astype(np.int32), macro_u, macro_v, macro_level
        )
        swing = np.take(table[_MACRO_STRENGTH], faces) * (grey * np.float32(2.0 / 255.0) - np.float32(1.0))
        for channel, tint in enumerate((_TINT_R, _TINT_G, _TINT_B)):
            albedo[channel] *= np.float32(1.0) + swing * np.take(table[tint], faces)

    @staticmethod
    def _highlight(
        scene: Scene,
        points: tuple[np.ndarray, np.ndarray, np.ndarray],
        normals: tuple[np.ndarray, np.ndarray, np.ndarray],
        rays: tuple[np.ndarray, np.ndarray, np.ndarray],
        ray_length: np.ndarray,
    ) -> list[np.ndarray]:
        """Per-channel Blinn-Phong term sum over lights of colour (n . h)^SHININESS / (1 + falloff), with h
        the half vector of the light and view directions: it moves with the camera, unlike everything else."""
        px, py, pz = points
        nx, ny, nz = normals
        inverse = np.float32(-1.0) / ray_length
        vx, vy, vz = rays[0] * inverse, rays[1] * inverse, rays[2] * inverse  # towards the camera
        falloff = np.float32(1.0 / (0.6 * scene.size[1]) ** 2)
        highlight = [np.zeros(px.shape, dtype=np.float32) for _ in range(3)]
        for position, colour in zip(
            scene.light_positions.astype(np.float32), scene.light_colours.astype(np.float32)
        ):
            lx, ly, lz = position[0] - px, position[1] - py, position[2] - pz
            distance2 = lx * lx + ly * ly + lz * lz
            inverse_l = np.float32(1.0) / np.sqrt(distance2 + np.float32(1e-6))
            hx, hy, hz = lx * inverse_l + vx, ly * inverse_l + vy, lz * inverse_l + vz
            cosine = (hx * nx + hy * ny + hz * nz) / np.sqrt(hx * hx + hy * hy + hz * hz + np.float32(1e-12))
            facing = (lx * nx + ly * ny + lz * nz) > 0
            term = np.where(
                facing, np.maximum(cosine, np.float32(0.0)) ** np.float32(CpuRenderer.SHININESS), 0
            )
            term = term / (np.float32(1.0) + distance2 * falloff)
            for channel in range(3):
                highlight[channel] += term * colour[channel]
        return highlight

    @staticmethod
    def _lighting(
        scene: Scene,
        px: np.ndarray,
        py: np.ndarray,
        pz: np.ndarray,
        nx: np.ndarray,
        ny: np.ndarray,
        nz: np.ndarray,
        room_axis: np.ndarray,
    ) -> list[np.ndarray]:
        """Per-channel irradiance: ambient + point lights, times corner/contact darkening (view-free)."""
        ambient = np.float32(scene.ambient)
        irradiance = [np.full(px.shape, ambient, dtype=np.float32) for _ in range(3)]
        falloff = np.float32(1.0 / (0.6 * scene.size[1]) ** 2)
        gain = np.float32((1.0 - scene.ambient) * 1.3)
        for position, colour in zip(
            scene.light_positions.astype(np.float32), scene.light_colours.astype(np.float32)
        ):
            lx, ly, lz = position[0] - px, position[1] - py, position[2] - pz
            distance2 = lx * lx + ly * ly + lz * lz
            lambert = np.maximum(lx * nx + ly * ny + lz * nz, np.float32(0.0)) / np.sqrt(
                distance2 + np.float32(1e-6)
            )
            intensity = gain * lambert / (np.float32(1.0) + distance2 * falloff)
            for channel in range(3):
                irradiance[channel] += intensity * colour[channel]

        # Room faces darken towards the edges where they meet the other faces (cheap ambient occlusion):
        # 1 - 0.35 / (1 + (4 e)^2) per perpendicular face at distance e; the face's own axis is excluded.
        size = scene.size.astype(np.float32)
        is_room = (room_axis >= 0).astype(np.float32)
        room_occlusion = np.ones(px.shape, dtype=np.float32)
        for axis, coordinate in enumerate((px, py, pz)):
            edge = np.minimum(coordinate, size[axis] - coordinate) * np.float32(4.0)
            darkening = np.float32(0.35) / (np.float32(1.0) + edge * edge)
            room_occlusion *= np.float32(1.0) - darkening * (room_axis != axis)
        # Boxes: a little darker close to the floor.
        height = np.maximum(py, np.float32(0.0)) * np.float32(8.0)
        box_occlusion = np.float32(1.0) - np.float32(0.25) / (np.float32(1.0) + height * height)
        occlusion = is_room * room_occlusion + (np.float32(1.0) - is_room) * box_occlusion
        # Contact shadows on upward faces at floor level (the floor and rugs), from the scene's floor map.
        rows_count, cols_count = scene.floor_shade.shape
        cols = np.clip((px * np.float32(cols_count / scene.size[0])).astype(np.int32), 0, cols_count - 1)
        rows = np.clip((pz * np.float32(rows_count / scene.size[2])).astype(np.int32), 0, rows_count - 1)
        floor_level = ((ny > 0.5) & (py < 0.05)).astype(np.float32)
        shade = np.take(scene.floor_shade.reshape(-1), rows * cols_count + cols)
        occlusion *= np.float32(1.0) - floor_level * (np.float32(1.0) - shade)
        return [channel * occlusion for channel in irradiance]
