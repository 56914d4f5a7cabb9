"""Renderers: (scene, K, pose) -> RGB, metric z-depth and surface classes.

``Renderer`` is the interface every scene source implements (the CPU ray caster here for procedural rooms,
``croco.synth.habitat.HabitatRenderer`` for habitat-sim); the pair sampler, co-visibility and shard writing
only ever talk to it. Conventions are those of ``croco.geometry.cameras`` (world y up, OpenCV camera axes,
camera-to-world poses, depth = camera z, pixel centres at +0.5).

``CpuRenderer`` casts one ray per pixel against the room (the inside of a box: one exit face per ray) and
against every furniture box (slab test in the box's yawed frame). To stay fast in numpy it only tests a box on
the screen rectangle its projection can cover (corners clipped against the near plane), so the work is about
the covered area rather than pixels × boxes. Hits are textured from the scene's mip-mapped atlas (level from
the pixel footprint) and lit by a view-independent model (ambient + Lambertian point lights with falloff +
corner and contact darkening), so the two views of a pair agree on the colour of every surface point. Depth is
exact (float32 ray parameter; rays are scaled so that the parameter equals the z-depth).
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import numpy as np

from croco.geometry.cameras import camera_rays
from croco.synth.scene import CLASS_ID, Scene, yaw_matrix

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
_COLUMNS = 15
_U_AXIS = (2, 0, 0)  # face axis -> axis measured by u (x-faces: z, floor/ceiling: x, z-faces: x)
_V_AXIS = (1, 2, 1)  # face axis -> axis measured by v (x-faces: y, floor/ceiling: z, z-faces: y)


def face_table(scene: Scene) -> np.ndarray:
    """(COLUMNS, 6 + 6B) float64 table of every face's normal, texture mapping, texture and class (cached)."""
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
        table[_DENSITY, face] = density.max()
        table[_TEXTURE, face] = scene.material_textures[material]
        table[_SEMANTIC, face] = (
            CLASS_ID["wall"] if axis != 1 else CLASS_ID["ceiling" if positive else "floor"]
        )
        table[_ROOM_AXIS, face] = axis
    for box in range(count):
        rotation = yaw_matrix(scene.yaws[box])
        centre, half = scene.centres[box], scene.halves[box]
        material = scene.box_materials[box]
        density = scene.material_density[material]
        offset = scene.material_offset[material]
        for axis in range(3):
            for positive in (0, 1):
                face = 6 + 6 * box + 2 * axis + positive
                table[_N_X : _N_Z + 1, face] = rotation[:, axis] * (1.0 if positive else -1.0)
                # u, v measure the local coordinates from the box corner: u = (R e_u) . (p - c) + h_u
                u_dir, v_dir = rotation[:, _U_AXIS[axis]], rotation[:, _V_AXIS[axis]]
                table[_U_X : _U_Z + 1, face] = density[0] * u_dir
                table[_U_0, face] = density[0] * (half[_U_AXIS[axis]] - u_dir @ centre) + offset[0]
                table[_V_X : _V_Z + 1, face] = density[1] * v_dir
                table[_V_0, face] = density[1] * (half[_V_AXIS[axis]] - v_dir @ centre) + offset[1]
                table[_DENSITY, face] = density.max()
                table[_TEXTURE, face] = scene.material_textures[material]
                table[_SEMANTIC, face] = scene.box_semantics[box]
                table[_ROOM_AXIS, face] = -1
    scene.cache["cpu_face_table"] = table
    return table


class CpuRenderer(Renderer):
    """Vectorised numpy ray caster for ``croco.synth.scene.Scene`` rooms.

    Works on flat per-pixel arrays (structure of arrays, float32) and one face id per pixel; every per-surface
    quantity comes from ``face_table`` by a 1-D gather. ``semantics=False`` skips the class map. Deterministic
    and single-threaded (parallelise over processes).
    """

    def __init__(
        self, height: int = 256, width: int | None = None, *, semantics: bool = True, mip_bias: float = 0.0
    ) -> None:
        width = height if width is None else width
        if height <= 0 or width <= 0:
            raise ValueError(f"render resolution must be positive, got {height}x{width}")
        self.resolution = (int(height), int(width))
        self.semantics = semantics
        self.mip_bias = float(mip_bias)
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
            for index in np.flatnonzero((rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2])):
                r0, r1, c0, c1 = rects[index]
                window = (slice(r0, r1), slice(c0, c1))
                self._cast_box(
                    scene, int(index), origin, [d[window] for d in directions], t[window], face[window]
                )

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
        local_dirs = (cos * dx - sin * dz, dy, sin * dx + cos * dz) if yaw != 0.0 else (dx, dy, dz)
        half = scene.halves[index]
        nears = []
        t_enter = t_leave = None
        for axis in range(3):
            inverse = np.float32(1.0) / local_dirs[axis]
            t_low = np.float32(-half[axis] - local_origin[axis]) * inverse
            t_high = np.float32(half[axis] - local_origin[axis]) * inverse
            near, far = np.minimum(t_low, t_high), np.maximum(t_low, t_high)
            nears.append(near)
            t_enter = near if t_enter is None else np.maximum(t_enter, near)
            t_leave = far if t_leave is None else np.minimum(t_leave, far)
        hit = (t_enter <= t_leave) & (t_enter > NEAR) & (t_enter < t)
        if not hit.any():
            return
        entered = t_enter[hit]
        axis = np.where(nears[0][hit] == entered, 0, np.where(nears[1][hit] == entered, 1, 2))
        direction = np.choose(axis, [d[hit] for d in local_dirs])
        t[hit] = entered
        face[hit] = 6 + 6 * index + 2 * axis + (direction < 0)  # entering against the direction: + face

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
        column = {
            name: np.take(table[index], faces)
            for name, index in (
                ("nx", _N_X),
                ("ny", _N_Y),
                ("nz", _N_Z),
                ("ux", _U_X),
                ("uy", _U_Y),
                ("uz", _U_Z),
                ("u0", _U_0),
                ("vx", _V_X),
                ("vy", _V_Y),
                ("vz", _V_Z),
                ("v0", _V_0),
                ("density", _DENSITY),
                ("texture", _TEXTURE),
                ("axis", _ROOM_AXIS),
            )
        }
        t = depth.reshape(-1)
        dx, dy, dz = (d.reshape(-1) for d in directions)
        px = np.float32(origin[0]) + dx * t
        py = np.float32(origin[1]) + dy * t
        pz = np.float32(origin[2]) + dz * t
        nx, ny, nz = column["nx"], column["ny"], column["nz"]

        texel_u = column["ux"] * px + column["uy"] * py + column["uz"] * pz + column["u0"]
        texel_v = column["vx"] * px + column["vy"] * py + column["vz"] * pz + column["v0"]
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

        irradiance = self._lighting(scene, px, py, pz, nx, ny, nz, column["axis"])
        # Filmic-style tone curve 1 - exp(-k x): near-linear in the shadows, highlights roll off instead of
        # clipping to flat white next to a lamp.
        gain = np.float32(-scene.exposure * TONE_SLOPE / 255.0)
        rgb = np.stack(
            [
                np.float32(255.5) - np.float32(255.0) * np.exp(a * (e * gain))
                for a, e in zip(albedo, irradiance)
            ],
            axis=-1,
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
