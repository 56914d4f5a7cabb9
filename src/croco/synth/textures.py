"""Procedural textures with the statistics of natural images, for the embedded room generator.

Cross-view completion needs texture: with flat colours a masked patch can be filled in from its neighbours
without looking at the other view, and with strictly repeating patterns the other view offers several equally
good matches. These textures are built, never downloaded, from the classic models of natural-image statistics:

- spectral noise: random phases with an amplitude spectrum 1/f^α (natural images have α ≈ 1; larger α gives
  the smooth blotches of plaster or clouds, anisotropic spectra give wood grain and brushed metal);
- multi-octave value noise (fractal Brownian motion) for turbulence, stains and marble veins (level sets);
- dead-leaves images (occluding discs or leaves with power-law sizes), the standard model of scale-invariant
  natural scenes with sharp occlusion edges, and random compositions of rectangles, strokes and blobs, used
  for paintings, rugs, terrazzo and foliage;
- man-made layouts with per-element variation: wood planks and bricks of random lengths, each cut from another
  place of the grain; tiles that each carry their own shade and piece of stone; wallpaper motifs at random
  positions or stripes of random widths.

Every pattern is a scalar field in [0, 1], periodic over its tile so that a surface can repeat it without
seams, coloured per scene by a random palette (gradient map) and modulated by an independent detail field.
The repeat itself is hidden by a second, "macro" layer (``macro_field``): a grey field of blotches and soft
stains that the renderer lays over each surface at another, incommensurate scale, so that no two repeats of a
tile look alike. Banks are deterministic for a seed and cached per process. Textures are stored with
box-filtered mip-maps in one flat ``TextureAtlas`` that the renderer indexes with integer arithmetic.
"""

from __future__ import annotations

import colorsys
import math
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
    "terrazzo",
    "metal",
    "foliage",
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


def blur(field: np.ndarray, sigma: float) -> np.ndarray:
    """Periodic Gaussian blur (``sigma`` in texels) through the FFT: soft edges, and the tile stays
    seamless."""
    size = field.shape[0]
    fu = np.fft.rfftfreq(size)[None, :]
    fv = np.fft.fftfreq(size)[:, None]
    transfer = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fu * fu + fv * fv))
    return np.fft.irfft2(np.fft.rfft2(field) * transfer, s=field.shape)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float64) / size
    return coords[None, :].repeat(size, 0), coords[:, None].repeat(size, 1)


def _wrapped(offset: np.ndarray) -> np.ndarray:
    """Signed periodic difference in [-0.5, 0.5) (tile units)."""
    return np.mod(offset + 0.5, 1.0) - 0.5


def running_layout(
    rng: np.random.Generator, size: int, rows: int, per_row: int, jitter: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of elements with random lengths (planks, bricks): per texel (element id, distance to the nearest
    joint along u, distance to the nearest joint along v), distances in tile units.

    Each row is cut at ``per_row`` points spread evenly with a random phase and ``jitter`` (0: equal lengths,
    1: fully random), cyclically, so the layout tiles seamlessly and no two rows line up.
    """
    u = np.arange(size, dtype=np.float64) / size
    ids = np.zeros((size, size), dtype=np.int64)
    joint_u = np.zeros((size, size))
    row_of = np.minimum((np.arange(size) * rows) // size, rows - 1)
    for row in range(rows):
        cuts = np.sort(
            np.mod(
                (np.arange(per_row) + 0.5 + jitter * rng.uniform(-0.5, 0.5, per_row)) / per_row
                + rng.random(),
                1,
            )
        )
        segment = np.searchsorted(cuts, u, side="right") % per_row  # before the first cut: the last (wrapped)
        distance = np.min(np.abs(_wrapped(u[:, None] - cuts[None, :])), axis=1)
        lines = row_of == row
        ids[lines] = row * per_row + segment
        joint_u[lines] = distance
    v = (np.arange(size, dtype=np.float64) + 0.5) / size * rows
    joint_v = np.minimum(np.mod(v, 1.0), 1.0 - np.mod(v, 1.0)) / rows
    return ids, joint_u, np.repeat(joint_v[:, None], size, axis=1)


def _shifted(field: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``field`` read with a random shift per element id: every plank, brick or tile its own piece of it."""
    size = field.shape[0]
    count = int(ids.max()) + 1
    shift_u, shift_v = rng.integers(0, size, count), rng.integers(0, size, count)
    rows, cols = np.indices(field.shape)
    return field[(rows + shift_v[ids]) % size, (cols + shift_u[ids]) % size]


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    """Continuous wood: growth rings across v warped by smooth noise, fine grain streaks along u."""
    _, v = _grid(size)
    rings = int(rng.integers(3, 11))
    warp = spectral_noise(rng, size, alpha=2.2, stretch=(6.0, 1.0)) - 0.5
    phase = rings * v + rng.uniform(0.8, 2.0) * warp
    ring = np.mod(phase, 1.0) ** rng.uniform(1.5, 4.0)
    grain = spectral_noise(rng, size, alpha=1.0, stretch=(12.0, 1.0))
    return _normalise(ring + 0.35 * grain + 0.2 * value_noise(rng, size, base_cells=2), contrast=0.7)


def wood_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Planks of random lengths, each cut from another place of the grain with its own shade, dark joints
    (a third of the entries: one continuous board, for furniture)."""
    grain = _grain(rng, size)
    if rng.random() < 0.35:
        return grain
    rows, per_row = int(rng.integers(3, 9)), int(rng.integers(1, 4))
    ids, joint_u, joint_v = running_layout(rng, size, rows, per_row, jitter=rng.uniform(0.5, 1.0))
    shade = rng.normal(0.0, 0.12, int(ids.max()) + 1)[ids]
    field = np.clip(_shifted(grain, ids, rng) + shade, 0.02, 1.0)
    joint = (joint_u < 0.6 / size) | (joint_v < 0.6 / size)
    return np.where(joint, 0.0, field).astype(np.float32)


def marble_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Veins along level sets of turbulence (irregular, branching), light base and dark veins."""
    turbulence = value_noise(rng, size, octaves=6, base_cells=2)
    warp = spectral_noise(rng, size, alpha=2.0)
    phase = rng.uniform(2.5, 7.0) * turbulence + rng.uniform(0.5, 2.0) * warp
    veins = np.abs(np.sin(np.pi * phase)) ** rng.uniform(0.15, 0.4)
    cloud = spectral_noise(rng, size, alpha=1.6)
    return np.clip(0.8 * veins + 0.2 * cloud, 0.0, 1.0).astype(np.float32)


def brick_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bricks of slightly uneven lengths (per-brick shade in [0, 0.75] and own piece of a speckle field) with
    light mortar joints (≈ 0.95)."""
    rows, per_row = 2 * int(rng.integers(3, 7)), int(rng.integers(2, 5))
    ids, joint_u, joint_v = running_layout(rng, size, rows, per_row, jitter=rng.uniform(0.15, 0.45))
    mortar = rng.uniform(0.08, 0.2) / rows
    shades = rng.uniform(0.05, 0.7, int(ids.max()) + 1)
    speckle = _shifted(spectral_noise(rng, size, alpha=1.1), ids, rng)
    field = np.clip(shades[ids] + 0.2 * (speckle - 0.5), 0.0, 0.75)
    in_mortar = (joint_v < mortar / 2) | (joint_u < mortar / 2)
    return np.where(in_mortar, 0.95 + 0.05 * value_noise(rng, size, base_cells=8), field).astype(np.float32)


def tiles_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Square tiles separated by grout (≈ 0.95); each tile has its own shade (up to 0.8), its own piece of a
    marbled surface and sometimes a motif, so that tiles can be told apart."""
    u, v = _grid(size)
    count = int(rng.choice([2, 4, 8]))
    grout = rng.uniform(0.02, 0.05)
    row, column = np.floor(v * count).astype(np.int64), np.floor(u * count).astype(np.int64)
    ids = row * count + column
    shades = rng.uniform(0.1, 0.7, count * count)
    if rng.random() < 0.4:  # checkerboard, but no two tiles alike
        shades = np.where(
            (np.arange(count)[:, None] + np.arange(count)[None, :]).reshape(-1) % 2 == 0, 0.15, 0.6
        )
        shades = shades + rng.normal(0.0, 0.05, count * count)
    surface = 0.25 * (_shifted(marble_pattern(rng, size), ids, rng) - 0.5)
    field = shades[ids] + surface
    decorated = rng.random(count * count) < rng.uniform(0.0, 0.4)
    du, dv = np.mod(u * count, 1.0) - 0.5, np.mod(v * count, 1.0) - 0.5
    diamond = (np.abs(du) + np.abs(dv)) < rng.uniform(0.2, 0.4)
    field = np.where(decorated[ids] & diamond, 0.75 - shades[ids] * 0.5, field)
    joint = (np.mod(v * count, 1.0) < grout * count) | (np.mod(u * count, 1.0) < grout * count)
    return np.where(joint, 0.95, np.clip(field, 0.0, 0.8)).astype(np.float32)


def plaster_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-contrast blotches (1/f^α, α in [1.6, 2.4]) with a fine speckle."""
    blotches = spectral_noise(rng, size, alpha=rng.uniform(1.6, 2.4))
    speckle = spectral_noise(rng, size, alpha=0.6)
    return _normalise(blotches + 0.25 * speckle + 0.3 * value_noise(rng, size, base_cells=4))


def stone_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Concrete/stone: natural 1/f spectrum (α ≈ 1.2–1.6) plus fBm stains and, sometimes, dark cracks."""
    base = spectral_noise(rng, size, alpha=rng.uniform(1.2, 1.6))
    field = _normalise(base + 0.6 * value_noise(rng, size, octaves=6, base_cells=2), contrast=0.8)
    if rng.random() < 0.5:
        level = value_noise(rng, size, octaves=5, base_cells=2)
        field = np.where(np.abs(level - 0.5) < rng.uniform(0.004, 0.012), 0.1 * field, field)
    return field.astype(np.float32)


def fabric_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Woven threads of uneven thickness over soft folds; sometimes a plaid of random stripe widths."""
    u, v = _grid(size)
    threads = int(rng.choice([24, 32, 48]))
    slub = 0.6 + 0.8 * spectral_noise(rng, size, alpha=1.2, stretch=(1.0, 8.0))
    weave = np.sin(2 * np.pi * threads * u) * np.sin(2 * np.pi * threads * v) * slub
    folds = spectral_noise(rng, size, alpha=2.0)
    field = 0.5 * weave + 1.2 * (folds - 0.5) + 0.3 * spectral_noise(rng, size, alpha=0.8)
    if rng.random() < 0.35:
        field = field + 1.5 * (_stripes(rng, size, u) + _stripes(rng, size, v))
    return _normalise(field)


def _stripes(rng: np.random.Generator, size: int, coordinate: np.ndarray) -> np.ndarray:
    """Stripes of random widths and shades across ``coordinate`` (tile units), periodic over the tile."""
    widths = rng.uniform(0.2, 1.0, int(rng.integers(4, 14)))
    edges = np.concatenate([[0.0], np.cumsum(widths) / widths.sum()])
    shades = rng.uniform(-0.5, 0.5, len(widths))
    index = np.clip(np.searchsorted(edges, coordinate, side="right") - 1, 0, len(widths) - 1)
    return shades[index]


def carpet_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fine pile (near-white spectrum) over larger worn patches, sometimes over a woven-in composition."""
    pile = spectral_noise(rng, size, alpha=rng.uniform(0.5, 0.9))
    patches = value_noise(rng, size, octaves=4, base_cells=2)
    field = pile + 0.8 * patches
    if rng.random() < 0.4:
        field = field + 2.0 * (composition(rng, size, shapes=int(rng.integers(4, 12))) - 0.5)
    return _normalise(field)


def scatter_motifs(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Motifs (discs, ellipses, diamonds, crosses) of random sizes, shades and angles at random positions over
    an aged background: the irregular alternative to a motif lattice."""
    u, v = _grid(size)
    field = 0.6 * (spectral_noise(rng, size, alpha=2.0) - 0.5)
    base = rng.uniform(0.02, 0.08)
    for _ in range(count):
        du, dv = _wrapped(u - rng.random()), _wrapped(v - rng.random())
        angle = rng.uniform(0, np.pi)
        c, s = math.cos(angle), math.sin(angle)
        a, b = (c * du + s * dv), (-s * du + c * dv)
        radius = base * rng.uniform(0.5, 1.8)
        shape = int(rng.integers(4))
        if shape == 0:
            inside = a * a + b * b < radius * radius
        elif shape == 1:
            inside = (a / radius) ** 2 + (b / (0.45 * radius)) ** 2 < 1.0
        elif shape == 2:
            inside = np.abs(a) + np.abs(b) < radius
        else:
            inside = ((np.abs(a) < radius) & (np.abs(b) < 0.3 * radius)) | (
                (np.abs(b) < radius) & (np.abs(a) < 0.3 * radius)
            )
        field = np.where(inside, rng.uniform(-1.0, 1.0), field)
    return field


def wallpaper_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Scattered motifs, stripes of random widths, or two-tone organic blobs (thresholded smooth noise), each
    aged by smooth noise: none of them repeats within the tile."""
    u, _ = _grid(size)
    choice = rng.random()
    if choice < 0.45:
        motif = scatter_motifs(rng, size, int(rng.integers(25, 90)))
    elif choice < 0.75:
        motif = _stripes(rng, size, u) + 0.15 * (spectral_noise(rng, size, alpha=1.0) - 0.5)
    else:
        smooth = spectral_noise(rng, size, alpha=rng.uniform(2.0, 3.0))
        motif = np.tanh((smooth - 0.5) * rng.uniform(8.0, 30.0))
    age = spectral_noise(rng, size, alpha=2.0)
    return _normalise(motif + 0.8 * (age - 0.5))


def dead_leaves(
    rng: np.random.Generator,
    size: int,
    discs: int = 600,
    r_min: float = 2.0,
    r_max: float | None = None,
    elongation: float = 1.0,
) -> np.ndarray:
    """Periodic dead-leaves image: discs (or leaves: ellipses ``elongation`` times longer than wide, at random
    angles) with radii ~ r^-3 on [r_min, r_max] px (default size/4) and random grey levels."""
    field = spectral_noise(rng, size, alpha=2.0)
    r_max = size / 4.0 if r_max is None else r_max
    uniform = rng.random(discs)
    radii = (r_min**-2 - uniform * (r_min**-2 - r_max**-2)) ** -0.5
    centres = rng.integers(0, size, size=(discs, 2))
    shades = rng.random(discs)
    angles = rng.uniform(0.0, np.pi, discs)
    for radius, (cy, cx), shade, angle in zip(radii, centres, shades, angles):
        reach = math.ceil(radius)
        offsets = np.arange(-reach, reach + 1)
        if elongation == 1.0:
            disc = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius
        else:
            c, s = math.cos(angle), math.sin(angle)
            a = c * offsets[None, :] + s * offsets[:, None]
            b = -s * offsets[None, :] + c * offsets[:, None]
            disc = a * a + (b * elongation) ** 2 <= radius * radius
        rows, cols = (cy + offsets) % size, (cx + offsets) % size
        patch = field[np.ix_(rows, cols)]
        patch[disc] = shade
        field[np.ix_(rows, cols)] = patch
    texture = spectral_noise(rng, size, alpha=1.0)
    return np.clip(field + 0.08 * (texture - 0.5), 0.0, 1.0).astype(np.float32)


def composition(rng: np.random.Generator, size: int, shapes: int = 14) -> np.ndarray:
    """A painting-like random composition: a 1/f background with rectangles, thick strokes and noise blobs,
    each of its own grey, with hard or slightly soft edges (periodic over the tile)."""
    u, v = _grid(size)
    field = 0.5 + 0.6 * (spectral_noise(rng, size, alpha=rng.uniform(1.5, 2.5)) - 0.5)
    for _ in range(shapes):
        du, dv = _wrapped(u - rng.random()), _wrapped(v - rng.random())
        kind = rng.random()
        if kind < 0.4:  # rectangle, sometimes rotated
            angle = rng.uniform(0, np.pi) if rng.random() < 0.3 else 0.0
            c, s = math.cos(angle), math.sin(angle)
            a, b = c * du + s * dv, -s * du + c * dv
            mask = (np.abs(a) < rng.uniform(0.03, 0.3)) & (np.abs(b) < rng.uniform(0.03, 0.3))
        elif kind < 0.7:  # stroke: a thick line segment
            angle = rng.uniform(0, np.pi)
            c, s = math.cos(angle), math.sin(angle)
            a, b = c * du + s * dv, -s * du + c * dv
            mask = (np.abs(a) < rng.uniform(0.1, 0.45)) & (np.abs(b) < rng.uniform(0.005, 0.03))
        else:  # blob: a disc warped by noise
            warp = 0.06 * (value_noise(rng, size, octaves=3, base_cells=4) - 0.5)
            mask = np.hypot(du, dv) + warp < rng.uniform(0.04, 0.2)
        shade = rng.random()
        field = np.where(mask, shade + 0.1 * (field - 0.5), field)
    if rng.random() < 0.5:
        field = blur(field, rng.uniform(0.3, 1.2))
    return np.clip(field, 0.0, 1.0).astype(np.float32)


def painting_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dead-leaves image or a random composition (both have the edges and blobs of real pictures)."""
    if rng.random() < 0.5:
        return dead_leaves(rng, size)
    return composition(rng, size, shapes=int(rng.integers(8, 24)))


def terrazzo_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Small chips of random shades and sizes (dead leaves with small radii) in a speckled binder."""
    chips = dead_leaves(rng, size, discs=int(rng.integers(800, 1600)), r_min=1.0, r_max=max(2.0, size / 28))
    binder = spectral_noise(rng, size, alpha=0.8)
    return np.clip(0.85 * chips + 0.15 * binder, 0.0, 1.0).astype(np.float32)


def metal_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed metal: strongly anisotropic fine noise, a broad sheen and a few scratches."""
    brushed = spectral_noise(rng, size, alpha=1.0, stretch=(40.0, 1.0))
    sheen = spectral_noise(rng, size, alpha=2.5)
    field = 0.5 * brushed + 0.8 * sheen
    u, v = _grid(size)
    for _ in range(int(rng.integers(0, 6))):
        angle = rng.uniform(0, np.pi)
        distance = np.abs(
            math.cos(angle) * _wrapped(u - rng.random()) + math.sin(angle) * _wrapped(v - rng.random())
        )
        field = np.where(distance < 0.6 / size, field + 0.4, field)
    return _normalise(field, contrast=0.6)


def foliage_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Leaves: elongated dead-leaves ellipses at random angles over dark gaps."""
    return dead_leaves(
        rng, size, discs=int(rng.integers(900, 1500)), r_min=2.5, r_max=size / 10, elongation=2.5
    )


def macro_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """The grey "macro" layer that hides texture repeats: 1/f^α blotches (α in [1.4, 2.2]) with soft stains
    (blurred dead leaves), in [0, 1] around 0.5."""
    blotches = spectral_noise(rng, size, alpha=rng.uniform(1.4, 2.2))
    stains = blur(
        dead_leaves(rng, size, discs=int(rng.integers(30, 90)), r_min=size / 40, r_max=size / 5), 2.0
    )
    return _normalise(blotches + rng.uniform(0.5, 1.2) * (stains - 0.5), contrast=0.7)


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
    "painting": painting_pattern,
    "terrazzo": terrazzo_pattern,
    "metal": metal_pattern,
    "foliage": foliage_pattern,
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
    elif kind == "metal":
        tint = _hsv(rng.uniform(0.08, 0.14), rng.uniform(0.3, 0.6), 1.0) if rng.random() < 0.3 else np.ones(3)
        low, high = rng.uniform(0.2, 0.45), rng.uniform(0.65, 0.95)
        colours = [tint * low, tint * (low + high) / 2, tint * high]
        positions = [0.0, 0.5, 1.0]
    elif kind == "foliage":
        leaf = rng.uniform(0.2, 0.4)
        colours = [
            _hsv(leaf, rng.uniform(0.5, 0.9), rng.uniform(0.05, 0.15)),
            _hsv(leaf + rng.uniform(-0.05, 0.05), rng.uniform(0.5, 0.9), rng.uniform(0.25, 0.45)),
            _hsv(leaf + rng.uniform(-0.08, 0.04), rng.uniform(0.4, 0.8), rng.uniform(0.5, 0.8)),
        ]
        positions = [0.0, 0.5, 1.0]
    elif kind in ("painting", "terrazzo"):
        count = int(rng.integers(4, 8))
        low_value = 0.1 if kind == "painting" else 0.35  # terrazzo: chips in a light binder
        colours = [
            _hsv(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(low_value, 1.0)) for _ in range(count)
        ]
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
    """One bank entry: a periodic pattern field and an independent detail field, both in [0, 1]; ``levels``
    is the field quantised to the 256 entries of a palette look-up table (precomputed: scenes colour it
    often)."""

    kind: str
    field: np.ndarray
    detail: np.ndarray
    levels: np.ndarray


MACRO_COUNT = 8
"""Macro fields per bank (each scene lays one or two of them over its surfaces)."""


class TextureBank:
    """Deterministic set of periodic pattern fields, ``count`` of them spread over ``TEXTURE_KINDS``, and
    ``MACRO_COUNT`` grey macro textures (``macro_field``).

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
            levels = np.round(np.clip(field, 0.0, 1.0) * 255.0).astype(np.uint8)
            self.by_kind[kind].append(index)
            self.patterns.append(PatternTexture(kind, field, detail - np.float32(0.5), levels))
        self.macros: list[np.ndarray] = []
        for index in range(MACRO_COUNT):
            grey = macro_field(np.random.default_rng([self.seed, 0x3AC0, index]), size)
            self.macros.append(np.repeat(np.round(grey * 255.0).astype(np.uint8)[..., None], 3, axis=2))

    def pick(self, rng: np.random.Generator, kinds: tuple[str, ...]) -> int:
        """A random bank index among the given kinds."""
        kind = kinds[int(rng.integers(len(kinds)))]
        options = self.by_kind[kind]
        return options[int(rng.integers(len(options)))]

    def colorize(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """(S, S, 3) uint8 texture: pattern ``index`` through a random palette, times its detail field."""
        pattern = self.patterns[index]
        positions, colours = random_palette(rng, pattern.kind)
        strength = rng.uniform(0.05, 0.25)
        steps = np.linspace(0.0, 1.0, 256)
        lut = (gradient_map(steps, positions, colours) * 255.0).astype(np.float32)  # (256, 3)
        gain = np.float32(1.0) + np.float32(2.0 * strength) * pattern.detail
        rgb = np.empty((*pattern.levels.shape, 3), dtype=np.uint8)
        for channel in range(3):
            value = np.take(lut[:, channel], pattern.levels) * gain + np.float32(0.5)
            np.clip(value, 0, 255, out=value)
            rgb[..., channel] = value
        if pattern.kind in ("wood", "fabric", "marble", "metal") and rng.random() < 0.5:
            rgb = np.ascontiguousarray(rgb.transpose(1, 0, 2))  # grain may run either way on a surface
        return rgb


def texture_bank(seed: int, count: int = 40, size: int = 256) -> TextureBank:
    """The bank for a seed, built once per process (≈ 2 s for 40 textures of 256² and the macro fields on
    one core)."""
    return _cached_bank(int(seed), int(count), int(size))


@lru_cache(maxsize=4)
def _cached_bank(seed: int, count: int, size: int) -> TextureBank:
    return TextureBank(seed, count, size)


# --------------------------------------------------------------------------------------------- atlas


def mipmaps(texture: np.ndarray) -> list[np.ndarray]:
    """Box-filtered pyramid of a square power-of-two (S, S, 3) uint8 texture, down to 1x1."""
    levels = [texture]
    current = texture
    while current.shape[0] > 1:
        side = current.shape[0] // 2
        # (rows pair, columns pair x RGB) without strided gathers; sums of four uint8 fit in uint16
        wide = current.reshape(side, 2, side, 6).astype(np.uint16)
        rows = wide[:, 0] + wide[:, 1]
        current = ((rows[..., :3] + rows[..., 3:] + np.uint16(2)) >> np.uint16(2)).astype(np.uint8)
        levels.append(current)
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
        self.packed = np.empty(len(textures) * self.stride, dtype=np.uint32)  # R | G << 8 | B << 16
        pyramids: dict[int, np.ndarray] = {}  # textures shared by several slots (macro layers) are built once
        for slot, texture in enumerate(textures):
            if id(texture) not in pyramids:
                wide = np.concatenate([level.reshape(-1, 3) for level in mipmaps(texture)]).astype(np.uint32)
                pyramids[id(texture)] = wide[:, 0] | (wide[:, 1] << 8) | (wide[:, 2] << 16)
            self.packed[slot * self.stride : (slot + 1) * self.stride] = pyramids[id(texture)]
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

    def _bilinear_taps(
        self, texture: np.ndarray, u: np.ndarray, v: np.ndarray, level: np.ndarray
    ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """The four texel indices into ``packed`` around each (u, v) at its mip ``level``, and their integer
        bilinear weights (1/16-texel precision, summing to 256); shared by ``sample`` and ``sample_channel``."""
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
        return weights, corners

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
        weights, corners = self._bilinear_taps(texture, u, v, level)
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

    def sample_channel(
        self, texture: np.ndarray, u: np.ndarray, v: np.ndarray, level: np.ndarray
    ) -> np.ndarray:
        """Bilinearly filtered green channel (float32, [0, 255]) as in ``sample``: grey textures (the macro
        layer) need one channel, at a third of the work."""
        level = np.minimum(level, self.levels - 1)
        weights, corners = self._bilinear_taps(texture, u, v, level)
        green = np.zeros(u.shape, dtype=np.uint32)
        for weight, index in zip(weights, corners):
            green += ((np.take(self.packed, index) >> np.uint32(8)) & np.uint32(0xFF)) * weight
        return green.astype(np.float32) * np.float32(1.0 / 256.0)

    def lookup(self, texture: np.ndarray, u: np.ndarray, v: np.ndarray, level: np.ndarray) -> np.ndarray:
        """(N, 3) uint8 RGB nearest texels (see ``lookup_packed``)."""
        packed = self.lookup_packed(texture, u, v, level)
        return np.stack([packed & 255, (packed >> 8) & 255, (packed >> 16) & 255], axis=1).astype(np.uint8)
