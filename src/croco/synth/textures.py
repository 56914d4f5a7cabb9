"""Procedural textures with the statistics of natural images, for the embedded room generator.

Cross-view completion needs texture: with flat colours a masked patch can be filled in from its neighbours
without looking at the other view. These textures are built, never downloaded, from the classic models of
natural-image statistics:

- spectral noise: random phases with an amplitude spectrum 1/f^α (natural images have α ≈ 1; larger α gives
  the smooth blotches of plaster or clouds, anisotropic spectra give wood grain and brushed surfaces);
- multi-octave value noise (fractal Brownian motion) for turbulence and stains;
- dead-leaves images (occluding discs with power-law radii), the standard model of scale-invariant natural
  scenes with sharp occlusion edges, used for "paintings" hung on the walls;
- structured man-made patterns (wood rings, marble veins, bricks, floor tiles, woven fabric, carpet,
  wallpaper).

Every pattern is a *periodic* scalar field in [0, 1] (so a surface can tile it without seams), coloured per
scene by a random palette (gradient map) and modulated by an independent detail field, which gives far more
variety than the bank size. Banks are deterministic for a seed and cached per process. Textures are stored
with box-filtered mip-maps in one flat ``TextureAtlas`` that the renderer indexes with integer arithmetic.
"""

from __future__ import annotations

import colorsys
import math
import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TEXTURE_KINDS = (
    "wood",
    "marble",
    "brick",
    "tiles",
    "plaster",
    "stone",
    "fabric",
    "carpet",
    "wallpaper",
    "painting",
)
"""Pattern families; scenes pick kinds that suit each surface (floors: wood/tiles/carpet/marble/stone, ...).
"""


# --------------------------------------------------------------------------------------------- scalar fields


def _normalise(field: np.ndarray, contrast: float = 0.5) -> np.ndarray:
    """Zero-mean unit-variance field squashed smoothly into [0, 1] (tanh keeps the tails without clipping)."""
    centred = field - field.mean()
    scale = centred.std() + 1e-8
    return (0.5 + 0.5 * np.tanh(contrast * centred / scale)).astype(np.float32)


def spectral_noise(
    rng: np.random.Generator, size: int, alpha: float, stretch: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Periodic noise with amplitude spectrum 1/f^alpha; ``stretch`` (u, v) > 1 smooths that axis."""
    white = rng.standard_normal((size, size))
    fu = np.fft.rfftfreq(size)[None, :] * size * stretch[0]
    fv = np.fft.fftfreq(size)[:, None] * size * stretch[1]
    radius = np.sqrt(fu * fu + fv * fv)
    radius[0, 0] = 1.0
    amplitude = radius ** (-alpha)
    amplitude[0, 0] = 0.0
    field = np.fft.irfft2(np.fft.rfft2(white) * amplitude, s=(size, size))
    return _normalise(field)


def value_noise(
    rng: np.random.Generator, size: int, octaves: int = 5, base_cells: int = 4, persistence: float = 0.5
) -> np.ndarray:
    """Periodic multi-octave value noise (fBm): smoothstep-interpolated random lattices, halving amplitude."""
    total = np.zeros((size, size), dtype=np.float64)
    amplitude = 1.0
    for octave in range(octaves):
        cells = base_cells * 2**octave
        if cells > size:
            break
        lattice = rng.random((cells, cells))
        coords = np.arange(size) * cells / size
        index0 = np.floor(coords).astype(np.int64)
        index1 = (index0 + 1) % cells
        frac = coords - index0
        frac = frac * frac * (3.0 - 2.0 * frac)
        rows0, rows1 = lattice[index0], lattice[index1]
        top = rows0[:, index0] * (1 - frac)[None, :] + rows0[:, index1] * frac[None, :]
        bottom = rows1[:, index0] * (1 - frac)[None, :] + rows1[:, index1] * frac[None, :]
        total += amplitude * (top * (1 - frac)[:, None] + bottom * frac[:, None])
        amplitude *= persistence
    return _normalise(total)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float64) / size
    return coords[None, :].repeat(size, 0), coords[:, None].repeat(size, 1)


def wood_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Growth rings across v, warped by smooth noise, with fine grain streaks along u."""
    _, v = _grid(size)
    rings = int(rng.integers(3, 11))
    warp = spectral_noise(rng, size, alpha=2.2, stretch=(6.0, 1.0)) - 0.5
    phase = rings * v + rng.uniform(0.8, 2.0) * warp
    ring = np.mod(phase, 1.0) ** rng.uniform(1.5, 4.0)
    grain = spectral_noise(rng, size, alpha=1.0, stretch=(12.0, 1.0))
    return _normalise(ring + 0.35 * grain + 0.2 * value_noise(rng, size, base_cells=2), contrast=0.7)


def marble_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Veins: |sin| of a slanted phase disturbed by turbulence; light base, dark veins."""
    u, v = _grid(size)
    k1, k2 = int(rng.integers(1, 4)), int(rng.integers(0, 3))
    turbulence = value_noise(rng, size, octaves=6, base_cells=2) - 0.5
    phase = k1 * u + k2 * v + rng.uniform(1.5, 4.0) * turbulence
    veins = np.abs(np.sin(np.pi * phase)) ** rng.uniform(0.15, 0.4)
    cloud = spectral_noise(rng, size, alpha=1.6)
    return np.clip(0.8 * veins + 0.2 * cloud, 0.0, 1.0).astype(np.float32)


def brick_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Running-bond bricks (per-brick shade in [0, 0.75]) with light mortar joints (≈ 0.95)."""
    u, v = _grid(size)
    rows = 2 * int(rng.integers(3, 7))
    columns = int(rng.integers(2, 5))
    mortar = rng.uniform(0.04, 0.09)
    row = np.floor(v * rows).astype(np.int64)
    shifted = u * columns + 0.5 * (row % 2)
    column = np.floor(shifted).astype(np.int64) % columns
    shades = rng.uniform(0.05, 0.7, size=(rows, columns))
    field = shades[row, column] + 0.15 * (spectral_noise(rng, size, alpha=1.1) - 0.5)
    in_mortar = (np.mod(v * rows, 1.0) < mortar) | (np.mod(shifted, 1.0) < mortar * rows / columns / 2)
    field = np.where(in_mortar, 0.95 + 0.05 * value_noise(rng, size, base_cells=8), np.clip(field, 0.0, 0.75))
    return field.astype(np.float32)


def tiles_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Square tiles (per-tile shade plus a marbled surface, up to 0.8) separated by grout (≈ 0.95)."""
    u, v = _grid(size)
    count = int(rng.choice([2, 4, 8]))
    grout = rng.uniform(0.02, 0.05)
    row, column = np.floor(v * count).astype(np.int64), np.floor(u * count).astype(np.int64)
    checker = rng.random() < 0.4
    shades = rng.uniform(0.2, 0.6, size=(count, count))
    if checker:
        shades = np.where((np.arange(count)[:, None] + np.arange(count)[None, :]) % 2 == 0, 0.15, 0.65)
    surface = 0.2 * (marble_pattern(rng, size) - 0.5)
    field = np.clip(shades[row, column] + surface, 0.0, 0.8)
    joint = (np.mod(v * count, 1.0) < grout * count) | (np.mod(u * count, 1.0) < grout * count)
    return np.where(joint, 0.95, field).astype(np.float32)


def plaster_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-contrast blotches (1/f^α, α in [1.6, 2.4]) with a fine speckle."""
    blotches = spectral_noise(rng, size, alpha=rng.uniform(1.6, 2.4))
    speckle = spectral_noise(rng, size, alpha=0.6)
    return _normalise(blotches + 0.25 * speckle + 0.3 * value_noise(rng, size, base_cells=4))


def stone_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Concrete/stone: natural 1/f spectrum (α ≈ 1.2–1.6) plus fBm stains."""
    base = spectral_noise(rng, size, alpha=rng.uniform(1.2, 1.6))
    return _normalise(base + 0.6 * value_noise(rng, size, octaves=6, base_cells=2), contrast=0.8)


def fabric_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Woven threads (product of sines) over soft folds."""
    u, v = _grid(size)
    threads = int(rng.choice([32, 48, 64]))
    weave = np.sin(2 * np.pi * threads * u) * np.sin(2 * np.pi * threads * v)
    folds = spectral_noise(rng, size, alpha=2.0)
    return _normalise(0.5 * weave + 1.2 * (folds - 0.5) + 0.3 * spectral_noise(rng, size, alpha=0.8))


def carpet_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fine pile (near-white spectrum) over larger worn patches."""
    pile = spectral_noise(rng, size, alpha=rng.uniform(0.5, 0.9))
    patches = value_noise(rng, size, octaves=4, base_cells=2)
    return _normalise(pile + 0.8 * patches)


def wallpaper_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes or a lattice of motifs, aged by smooth noise."""
    u, v = _grid(size)
    count = int(rng.integers(3, 12))
    if rng.random() < 0.5:
        motif = np.sin(2 * np.pi * count * u) ** 2 + 0.3 * np.sin(2 * np.pi * 4 * count * u)
    else:
        du = np.mod(u * count, 1.0) - 0.5
        dv = np.mod(v * count + 0.5 * (np.floor(u * count) % 2), 1.0) - 0.5
        radius = rng.uniform(0.15, 0.35)
        motif = (np.sqrt(du * du + dv * dv) < radius).astype(np.float64)
    age = spectral_noise(rng, size, alpha=2.0)
    return _normalise(motif + 0.8 * (age - 0.5))


def dead_leaves(rng: np.random.Generator, size: int, discs: int = 600) -> np.ndarray:
    """Periodic dead-leaves image: discs with radii ~ r^-3 on [2, size/4] px and random grey levels."""
    field = spectral_noise(rng, size, alpha=2.0)
    r_min, r_max = 2.0, size / 4.0
    uniform = rng.random(discs)
    radii = (r_min**-2 - uniform * (r_min**-2 - r_max**-2)) ** -0.5
    centres = rng.integers(0, size, size=(discs, 2))
    shades = rng.random(discs)
    for radius, (cy, cx), shade in zip(radii, centres, shades):
        reach = math.ceil(radius)
        offsets = np.arange(-reach, reach + 1)
        disc = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius
        rows, cols = (cy + offsets) % size, (cx + offsets) % size
        patch = field[np.ix_(rows, cols)]
        patch[disc] = shade
        field[np.ix_(rows, cols)] = patch
    texture = spectral_noise(rng, size, alpha=1.0)
    return np.clip(field + 0.08 * (texture - 0.5), 0.0, 1.0).astype(np.float32)


_PATTERNS = {
    "wood": wood_pattern,
    "marble": marble_pattern,
    "brick": brick_pattern,
    "tiles": tiles_pattern,
    "plaster": plaster_pattern,
    "stone": stone_pattern,
    "fabric": fabric_pattern,
    "carpet": carpet_pattern,
    "wallpaper": wallpaper_pattern,
    "painting": dead_leaves,
}


# --------------------------------------------------------------------------------------------- colour


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def random_palette(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions (n,), colours (n, 3) in [0, 1]) of a gradient map suited to a pattern kind.

    Fields of brick/tiles put joints near 0.95, so their palettes end with a mortar/grout colour.
    """
    hue = rng.random()
    if kind == "wood":
        hue = rng.uniform(0.03, 0.12)
        colours = [
            _hsv(hue, rng.uniform(0.5, 0.85), rng.uniform(0.15, 0.35)),
            _hsv(hue + 0.01, rng.uniform(0.4, 0.75), rng.uniform(0.4, 0.6)),
            _hsv(hue + 0.02, rng.uniform(0.3, 0.6), rng.uniform(0.65, 0.9)),
        ]
        positions = [0.0, 0.5, 1.0]
    elif kind == "marble":
        base = _hsv(hue, rng.uniform(0.0, 0.15), rng.uniform(0.75, 0.95))
        vein = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.5), rng.uniform(0.15, 0.5))
        positions, colours = [0.0, 0.55, 1.0], [vein, 0.5 * (vein + base), base]
    elif kind == "brick":
        brick_hue = rng.uniform(0.0, 0.08) if rng.random() < 0.7 else hue
        mortar = _hsv(hue, rng.uniform(0.0, 0.1), rng.uniform(0.6, 0.9))
        colours = [
            _hsv(brick_hue, rng.uniform(0.5, 0.8), rng.uniform(0.2, 0.4)),
            _hsv(brick_hue + 0.02, rng.uniform(0.4, 0.7), rng.uniform(0.45, 0.75)),
            mortar,
            mortar,
        ]
        positions = [0.0, 0.75, 0.85, 1.0]
    elif kind == "tiles":
        grout = _hsv(hue, rng.uniform(0.0, 0.1), rng.uniform(0.3, 0.9))
        second = hue + rng.uniform(-0.15, 0.15) if rng.random() < 0.7 else hue + 0.5
        colours = [
            _hsv(hue, rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.5)),
            _hsv(second, rng.uniform(0.0, 0.6), rng.uniform(0.5, 0.95)),
            grout,
            grout,
        ]
        positions = [0.0, 0.8, 0.88, 1.0]
    elif kind == "painting":
        count = int(rng.integers(4, 8))
        colours = [_hsv(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.1, 1.0)) for _ in range(count)]
        positions = np.linspace(0.0, 1.0, count).tolist()
    else:  # plaster, stone, fabric, carpet, wallpaper
        light = kind in ("plaster", "wallpaper")
        saturation = rng.uniform(0.0, 0.35) if light or kind == "stone" else rng.uniform(0.15, 0.8)
        low_value = rng.uniform(0.45, 0.7) if light else rng.uniform(0.1, 0.4)
        high_value = min(1.0, low_value + rng.uniform(0.2, 0.5))
        accent = hue + (rng.uniform(-0.1, 0.1) if rng.random() < 0.8 else 0.5)
        colours = [
            _hsv(hue, saturation, low_value),
            _hsv(accent, saturation * rng.uniform(0.5, 1.2), 0.5 * (low_value + high_value)),
            _hsv(hue, saturation * rng.uniform(0.3, 1.0), high_value),
        ]
        positions = [0.0, 0.5, 1.0]
    return np.asarray(positions, dtype=np.float64), np.stack(colours).astype(np.float64)


def gradient_map(field: np.ndarray, positions: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Map a scalar field in [0, 1] through a piecewise-linear palette to (H, W, 3) float in [0, 1]."""
    return np.stack([np.interp(field, positions, colours[:, c]) for c in range(3)], axis=-1)


# --------------------------------------------------------------------------------------------- bank


@dataclass(frozen=True)
class PatternTexture:
    """One bank entry: a periodic pattern field and an independent detail field, both in [0, 1]."""

    kind: str
    field: np.ndarray
    detail: np.ndarray


class TextureBank:
    """Deterministic set of periodic pattern fields, ``count`` of them spread over ``TEXTURE_KINDS``.

    Scenes colour the fields with their own palettes (``colorize``), so a modest bank gives varied rooms.
    """

    def __init__(self, seed: int, count: int = 40, size: int = 256) -> None:
        if size < 8 or size & (size - 1):
            raise ValueError(f"texture size must be a power of two >= 8, got {size}")
        if count < len(TEXTURE_KINDS):
            raise ValueError(
                f"texture bank count must be >= {len(TEXTURE_KINDS)} (one per kind), got {count}"
            )
        self.seed, self.count, self.size = int(seed), int(count), int(size)
        self.patterns: list[PatternTexture] = []
        self.by_kind: dict[str, list[int]] = {kind: [] for kind in TEXTURE_KINDS}
        for index in range(count):
            kind = TEXTURE_KINDS[index % len(TEXTURE_KINDS)]
            rng = np.random.default_rng([self.seed, 0x7E47, index])
            field = _PATTERNS[kind](rng, size)
            detail = spectral_noise(rng, size, alpha=rng.uniform(0.7, 1.3))
            self.by_kind[kind].append(index)
            self.patterns.append(PatternTexture(kind, field, detail))

    def pick(self, rng: np.random.Generator, kinds: tuple[str, ...]) -> int:
        """A random bank index among the given kinds."""
        kind = kinds[int(rng.integers(len(kinds)))]
        options = self.by_kind[kind]
        return options[int(rng.integers(len(options)))]

    def colorize(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """(S, S, 3) uint8 texture: pattern ``index`` through a random palette, times its detail field."""
        pattern = self.patterns[index]
        positions, colours = random_palette(rng, pattern.kind)
        levels = np.linspace(0.0, 1.0, 256)
        lut = (gradient_map(levels, positions, colours) * 255.0).astype(np.float32)  # (256, 3)
        rgb = lut[np.round(pattern.field * 255.0).astype(np.int64)]
        strength = rng.uniform(0.05, 0.25)
        rgb *= (1.0 + 2.0 * strength * (pattern.detail - 0.5))[..., None]
        if pattern.kind in ("wood", "fabric", "marble") and rng.random() < 0.5:
            rgb = rgb.transpose(1, 0, 2)  # grain may run either way on a surface
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def texture_bank(seed: int, count: int = 40, size: int = 256) -> TextureBank:
    """The bank for a seed, built once per process (≈ 1.5 s for 40 textures of 256² on one core)."""
    return _cached_bank(int(seed), int(count), int(size))


@lru_cache(maxsize=4)
def _cached_bank(seed: int, count: int, size: int) -> TextureBank:
    return TextureBank(seed, count, size)


# --------------------------------------------------------------------------------------------- atlas


def mipmaps(texture: np.ndarray) -> list[np.ndarray]:
    """Box-filtered pyramid of a square power-of-two (S, S, 3) uint8 texture, down to 1x1."""
    levels = [texture]
    current = texture.astype(np.float32)
    while current.shape[0] > 1:
        current = 0.25 * (
            current[0::2, 0::2] + current[1::2, 0::2] + current[0::2, 1::2] + current[1::2, 1::2]
        )
        levels.append(np.clip(current + 0.5, 0, 255).astype(np.uint8))
    return levels


class TextureAtlas:
    """Mip-mapped textures of equal power-of-two size flattened into one packed RGBA uint32 array.

    ``lookup`` fetches nearest texels at a per-pixel mip level with wrap-around addressing, using only integer
    arithmetic on flat indices (a 1-D uint32 gather is ~20x faster in numpy than gathering (N, 3) uint8 rows).
    """

    def __init__(self, textures: list[np.ndarray]) -> None:
        if not textures:
            raise ValueError("TextureAtlas needs at least one texture")
        size = textures[0].shape[0]
        if size & (size - 1) or any(t.shape != (size, size, 3) or t.dtype != np.uint8 for t in textures):
            raise ValueError(f"all atlas textures must be ({size}, {size}, 3) uint8 with a power-of-two size")
        self.size = size
        self.levels = int(math.log2(size)) + 1
        self.level_sizes = np.array([size >> level for level in range(self.levels)], dtype=np.int64)
        self.level_offsets = np.concatenate([[0], np.cumsum(self.level_sizes**2)[:-1]]).astype(np.int64)
        self.stride = int(np.sum(self.level_sizes**2))
        rgba = np.zeros((len(textures) * self.stride, 4), dtype=np.uint8)
        row = 0
        for texture in textures:
            for level in mipmaps(texture):
                count = level.shape[0] * level.shape[1]
                rgba[row : row + count, :3] = level.reshape(-1, 3)
                row += count
        if sys.byteorder == "little":  # bytes R, G, B, 0 read as one uint32 = R | G << 8 | B << 16
            self.packed = rgba.view(np.uint32).reshape(-1)
        else:
            wide = rgba.astype(np.uint32)
            self.packed = wide[:, 0] | (wide[:, 1] << 8) | (wide[:, 2] << 16)
        self.count = len(textures)
        if len(textures) * self.stride >= 2**31:
            raise ValueError(f"TextureAtlas of {len(textures)} textures of {size}^2 exceeds 2^31 texels")
        self._subtexel_scale = np.array(
            [16.0 / (1 << level) for level in range(self.levels)], dtype=np.float32
        )
        self._sides32 = self.level_sizes.astype(np.int32)
        self._offsets32 = self.level_offsets.astype(np.int32)

    def lookup_packed(
        self, texture: np.ndarray, u: np.ndarray, v: np.ndarray, level: np.ndarray
    ) -> np.ndarray:
        """(N,) uint32 texels (R | G << 8 | B << 16) of ``texture`` at level-0 texel coordinates (u, v), read
        at mip ``level`` (clamped to the pyramid)."""
        level = np.clip(level, 0, self.levels - 1)
        scale = np.ldexp(np.float32(1.0), -level).astype(np.float32)
        side = self.level_sizes[level]
        mask = side - 1
        column = np.floor(u * scale).astype(np.int64) & mask
        row = np.floor(v * scale).astype(np.int64) & mask
        index = texture.astype(np.int64) * self.stride + self.level_offsets[level] + row * side + column
        return np.take(self.packed, index)

    def sample(
        self, texture: np.ndarray, u: np.ndarray, v: np.ndarray, level: np.ndarray
    ) -> list[np.ndarray]:
        """Bilinearly filtered [R, G, B] float32 arrays at level-0 texel coordinates (u, v), mip ``level`` (>=
        0; levels past the 1x1 one are clamped).

        Texel centres sit at +0.5 like pixel centres; filtering wraps around the periodic texture. Without it,
        surfaces seen from close up (texture magnified) show blocky texels that no real camera produces.
        Weights use 1/16-texel fixed point so that the blend runs on packed integers: R and B share one uint32
        (two 16-bit lanes), G another, which halves the numpy work.
        """
        level = np.minimum(level, self.levels - 1)
        scale = np.take(self._subtexel_scale, level)  # 16 / 2^level: 1/16-texel units of the level
        side = np.take(self._sides32, level)
        mask = side - 1
        su = (u * scale - np.float32(8.0)).astype(np.int32)  # shift by half a texel: texel centres
        sv = (v * scale - np.float32(8.0)).astype(np.int32)
        wu, wv = (su & 15).astype(np.uint32), (sv & 15).astype(np.uint32)
        column0, row0 = su >> 4, sv >> 4
        base = texture.astype(np.int32) * np.int32(self.stride) + np.take(self._offsets32, level)
        column1 = (column0 + 1) & mask
        column0 &= mask
        row_index0 = base + (row0 & mask) * side
        row_index1 = base + ((row0 + 1) & mask) * side
        inverse_u, inverse_v = np.uint32(16) - wu, np.uint32(16) - wv
        weights = (inverse_u * inverse_v, wu * inverse_v, inverse_u * wv, wu * wv)  # sum to 256
        corners = (row_index0 + column0, row_index0 + column1, row_index1 + column0, row_index1 + column1)
        red_blue = np.zeros(u.shape, dtype=np.uint32)
        green = np.zeros(u.shape, dtype=np.uint32)
        for weight, index in zip(weights, corners):
            packed = np.take(self.packed, index)
            red_blue += (packed & np.uint32(0x00FF00FF)) * weight
            green += ((packed >> np.uint32(8)) & np.uint32(0xFF)) * weight
        third = np.float32(1.0 / 256.0)
        return [
            (red_blue & np.uint32(0xFFFF)).astype(np.float32) * third,
            green.astype(np.float32) * third,
            (red_blue >> np.uint32(16)).astype(np.float32) * third,
        ]

    def lookup(self, texture: np.ndarray, u: np.ndarray, v: np.ndarray, level: np.ndarray) -> np.ndarray:
        """(N, 3) uint8 RGB nearest texels (see ``lookup_packed``)."""
        packed = self.lookup_packed(texture, u, v, level)
        return np.stack([packed & 255, (packed >> 8) & 255, (packed >> 16) & 255], axis=1).astype(np.uint8)
