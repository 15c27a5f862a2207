"""Seeded procedural furnished rooms: the built-in scene source.

``generate_room(seed, index, config)`` builds one rectangular room, deterministically from ``(seed, index)``:

- Frame: z-up, metres, interior ``[0, W] x [0, L]``, floor top at z = 0, ceiling underside at z = H.
- Shell: one watertight solid (floor slab below z = 0, 4 walls of ``wall_thickness`` outside the interior,
  optional ceiling slab above z = H) with door openings (floor to ``door_height``) and window openings (sill
  at ``window_sill``) cut through the walls. It is built as a union of grid cells, so there are no coincident
  faces inside the solid.
- Furniture: tables (with chairs around some), chairs, beds, shelves with books, sofas, cabinets, floor and
  table lamps and vases, each assembled from a few primitives with random realistic dimensions. Pieces stand
  on the floor (lamps and vases may stand on tables and low cabinets), placed by rejection sampling of 2-D
  oriented footprints: inside the interior, clear of each other and of the floor in front of doors, mostly
  wall-aligned, large pieces mostly against a wall with their back (local +y) to it.
- Materials: metallic-roughness with plausible palettes; floors, wood, fabric and wall paint optionally get a
  small procedural base-colour texture (planks, tiles, weave, plaster) tiling once per metre, since every
  primitive has UVs in metres.

Parts: ``floor``, ``ceiling`` (if any), ``wall_south`` (y = 0), ``wall_east`` (x = W), ``wall_north``
(y = L), ``wall_west`` (x = 0), then one part per furniture piece (``<kind>_<n>``). ``Scene.metadata`` holds
the room size, the openings and every piece's footprint (``center``, ``yaw``, ``half_extents``) and support.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from genrecon.data.scenes.scene import Scene
from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.geometry.primitives import box, cylinder, frustum, grid_cell_surface, merge_parts


@dataclass(frozen=True)
class SyntheticRoomConfig:
    """Ranges are inclusive ``(low, high)``; lengths in metres."""

    width_range: tuple[float, float] = (3.0, 8.0)  # along x
    length_range: tuple[float, float] = (3.0, 6.0)  # along y
    height_range: tuple[float, float] = (2.5, 3.0)
    furniture_count_range: tuple[int, int] = (5, 30)
    ceiling_probability: float = 0.5
    door_count_range: tuple[int, int] = (1, 2)
    window_count_range: tuple[int, int] = (0, 3)
    wall_thickness: float = 0.1
    slab_thickness: float = 0.1  # floor and ceiling slabs
    door_height: float = 2.1
    window_sill: float = 0.9
    floor_texture: bool = True
    wall_texture: bool = True
    furniture_textures: bool = True
    texture_size: int = 128  # pixels per metre of the procedural textures
    cylinder_segments: int = 16

    def __post_init__(self) -> None:
        for name in (
            "width_range",
            "length_range",
            "height_range",
            "furniture_count_range",
            "door_count_range",
            "window_count_range",
        ):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must satisfy 0 <= low <= high, got {(lo, hi)}")
        if min(self.width_range[0], self.length_range[0]) < 2.0:
            raise ValueError("rooms narrower than 2 m leave no space for doors and furniture")
        if self.height_range[0] < max(self.door_height, self.window_sill + 0.5) + 0.2:
            raise ValueError("the lowest room height must clear doors and windows by 0.2 m")
        if not 0.0 <= self.ceiling_probability <= 1.0:
            raise ValueError("ceiling_probability must be in [0, 1]")
        if self.wall_thickness <= 0 or self.slab_thickness <= 0 or self.texture_size < 8:
            raise ValueError("wall/slab thickness must be positive and texture_size at least 8")


# ---------------------------------------------------------------------------------------------- textures
def _periodic_noise(rng: np.random.Generator, size: int, waves: int = 6, max_freq: int = 5) -> np.ndarray:
    """``[size, size]`` smooth noise in [-1, 1] built from integer-frequency waves, so it tiles seamlessly."""
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size))
    for _ in range(waves):
        fx, fy = rng.integers(-max_freq, max_freq + 1, size=2)
        out += rng.uniform(0.5, 1.0) * np.cos(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
    return out / max(np.abs(out).max(), 1e-6)


def _to_image(rgb: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Colour ``[3]`` times shade ``[S, S]`` -> ``[S, S, 3]`` uint8."""
    return np.clip(rgb[None, None, :] * shade[..., None] * 255.0, 0, 255).round().astype(np.uint8)


def _wood_texture(rng: np.random.Generator, size: int, rgb: np.ndarray) -> np.ndarray:
    """Planks running along u, 4-8 per metre, one end joint per plank row, tinted boards, wavy grain."""
    yy, xx = np.mgrid[0:size, 0:size]
    rows = int(rng.integers(4, 9))
    row = yy * rows // size
    joint = rng.integers(0, size, rows)
    board = row * 2 + (xx >= joint[row])
    tint = rng.uniform(0.82, 1.12, 2 * rows)[board]
    phase = rng.uniform(0, 2 * np.pi, 2 * rows)[board]
    streaks = rng.integers(5, 12) * rows
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * streaks * yy / size + 2.0 * _periodic_noise(rng, size) + phase)
    shade = tint * (0.86 + 0.14 * grain)
    seam = (yy * rows % size < rows) | (xx == joint[row]) | (xx == 0)
    shade[seam] *= 0.55
    return _to_image(rgb, shade)


def _tile_texture(rng: np.random.Generator, size: int, rgb: np.ndarray) -> np.ndarray:
    """2-4 square tiles per metre with grout lines and a per-tile tint."""
    yy, xx = np.mgrid[0:size, 0:size]
    n = int(rng.integers(2, 5))
    tile = (yy * n // size) * n + xx * n // size
    shade = rng.uniform(0.92, 1.06, n * n)[tile] * (1.0 + 0.03 * _periodic_noise(rng, size))
    grout_px = max(1, size // 64)
    grout = ((yy * n) % size < grout_px * n) | ((xx * n) % size < grout_px * n)
    shade[grout] = rng.uniform(0.45, 0.8)
    return _to_image(rgb, shade)


def _fabric_texture(rng: np.random.Generator, size: int, rgb: np.ndarray) -> np.ndarray:
    """Fine weave (alternating threads) over soft mottling."""
    yy, xx = np.mgrid[0:size, 0:size]
    weave = np.where((xx // 2 + yy // 2) % 2 == 0, 1.0, 0.93)
    return _to_image(rgb, weave * (0.95 + 0.05 * _periodic_noise(rng, size, max_freq=8)))


def _plaster_texture(rng: np.random.Generator, size: int, rgb: np.ndarray) -> np.ndarray:
    """Low-contrast mottled paint."""
    return _to_image(rgb, 0.96 + 0.04 * _periodic_noise(rng, size, waves=10, max_freq=8))


# ---------------------------------------------------------------------------------------------- materials
_WOOD = (
    (0.76, 0.60, 0.42),
    (0.55, 0.38, 0.24),
    (0.36, 0.24, 0.15),
    (0.85, 0.72, 0.55),
    (0.45, 0.30, 0.20),
    (0.65, 0.50, 0.35),
)
_FABRIC = (
    (0.55, 0.55, 0.57),
    (0.78, 0.72, 0.62),
    (0.25, 0.32, 0.45),
    (0.35, 0.45, 0.35),
    (0.60, 0.25, 0.22),
    (0.85, 0.83, 0.80),
    (0.20, 0.20, 0.22),
    (0.70, 0.55, 0.35),
)
_PAINT = (
    (0.95, 0.95, 0.93),
    (0.90, 0.88, 0.82),
    (0.20, 0.22, 0.25),
    (0.55, 0.65, 0.70),
    (0.80, 0.70, 0.55),
    (0.62, 0.70, 0.58),
    (0.85, 0.60, 0.50),
)
_METAL = ((0.91, 0.92, 0.92), (0.95, 0.64, 0.54), (1.00, 0.78, 0.34), (0.15, 0.15, 0.16), (0.56, 0.57, 0.58))
_CERAMIC = (
    (0.95, 0.95, 0.92),
    (0.30, 0.45, 0.55),
    (0.70, 0.35, 0.25),
    (0.85, 0.80, 0.65),
    (0.15, 0.15, 0.15),
)
_WALL = (
    (0.93, 0.92, 0.88),
    (0.88, 0.86, 0.80),
    (0.80, 0.84, 0.86),
    (0.86, 0.82, 0.74),
    (0.75, 0.80, 0.74),
    (0.95, 0.95, 0.95),
)
_TILE = ((0.90, 0.90, 0.88), (0.60, 0.60, 0.62), (0.75, 0.68, 0.58), (0.35, 0.38, 0.40))
_CARPET = ((0.50, 0.48, 0.45), (0.35, 0.38, 0.45), (0.70, 0.66, 0.58), (0.45, 0.30, 0.28))


class _Materials:
    """Draws named materials from the palettes; textures only where the config allows them."""

    def __init__(self, rng: np.random.Generator, config: SyntheticRoomConfig) -> None:
        self.rng = rng
        self.config = config
        self.count = 0

    def _colour(self, palette: tuple) -> np.ndarray:
        rgb = np.asarray(palette[self.rng.integers(len(palette))]) + self.rng.uniform(-0.04, 0.04, 3)
        return np.clip(rgb, 0.02, 1.0)

    def _make(
        self,
        kind: str,
        rgb: np.ndarray,
        roughness: float,
        metallic: float = 0.0,
        texture: Callable | None = None,
    ) -> PBRMaterial:
        self.count += 1
        name = f"{kind}_{self.count}"
        if texture is None:
            return PBRMaterial(name, tuple(float(c) for c in rgb), metallic, roughness)
        image = texture(self.rng, self.config.texture_size, rgb)
        return PBRMaterial(name, (1.0, 1.0, 1.0), metallic, roughness, base_color_texture=image)

    def wood(self) -> PBRMaterial:
        tex = _wood_texture if self.config.furniture_textures else None
        return self._make("wood", self._colour(_WOOD), float(self.rng.uniform(0.4, 0.75)), texture=tex)

    def paint(self) -> PBRMaterial:
        return self._make("paint", self._colour(_PAINT), float(self.rng.uniform(0.35, 0.7)))

    def metal(self) -> PBRMaterial:
        rgb = self._colour(_METAL)
        return self._make("metal", rgb, float(self.rng.uniform(0.2, 0.5)), float(self.rng.uniform(0.85, 1.0)))

    def fabric(self) -> PBRMaterial:
        tex = _fabric_texture if self.config.furniture_textures else None
        return self._make("fabric", self._colour(_FABRIC), float(self.rng.uniform(0.75, 0.9)), texture=tex)

    def ceramic(self) -> PBRMaterial:
        return self._make("ceramic", self._colour(_CERAMIC), float(self.rng.uniform(0.2, 0.4)))

    def frame(self) -> PBRMaterial:
        """Structural material of a piece: mostly wood, else paint."""
        return self.wood() if self.rng.random() < 0.7 else self.paint()

    def floor(self) -> PBRMaterial:
        textured = self.config.floor_texture
        pick = self.rng.random()
        if pick < 0.5:
            tex = _wood_texture if textured else None
            return self._make(
                "floor_wood", self._colour(_WOOD), float(self.rng.uniform(0.4, 0.7)), texture=tex
            )
        if pick < 0.8:
            tex = _tile_texture if textured else None
            return self._make(
                "floor_tile", self._colour(_TILE), float(self.rng.uniform(0.2, 0.4)), texture=tex
            )
        tex = _fabric_texture if textured else None
        return self._make(
            "floor_carpet", self._colour(_CARPET), float(self.rng.uniform(0.85, 0.9)), texture=tex
        )

    def wall(self) -> PBRMaterial:
        tex = _plaster_texture if self.config.wall_texture else None
        return self._make("wall_paint", self._colour(_WALL), float(self.rng.uniform(0.7, 0.9)), texture=tex)

    def ceiling(self) -> PBRMaterial:
        return self._make("ceiling_paint", self._colour(_WALL[-1:]), float(self.rng.uniform(0.8, 0.9)))


# ---------------------------------------------------------------------------------------------- furniture
@dataclass
class _Piece:
    """A piece in its local frame: footprint centred on the origin, bottom at z = 0, front towards -y.

    ``half`` ``[2]`` are the footprint half extents; ``top`` is ``(z, half_x, half_y)`` of a flat top that can
    hold small pieces, or None.
    """

    kind: str
    mesh: PBRMesh
    half: tuple[float, float]
    height: float
    top: tuple[float, float, float] | None = None


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _legs(
    hx: float,
    hy: float,
    size: float,
    z0: float,
    z1: float,
    material: PBRMaterial,
    round_legs: bool,
    segments: int,
) -> list[PBRMesh]:
    """Four legs of cross-section ``size``, their outer sides on the rectangle ``[-hx, hx] x [-hy, hy]``."""
    legs = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (hx - size / 2), sy * (hy - size / 2)
            if round_legs:
                legs.append(cylinder(size / 2, z1 - z0, material, segments, base=(cx, cy, z0)))
            else:
                legs.append(
                    box((cx - size / 2, cy - size / 2, z0), (cx + size / 2, cy + size / 2, z1), material)
                )
    return legs


def _table(rng: np.random.Generator, mats: _Materials, segments: int) -> _Piece:
    top_mat = mats.frame()
    metal_legs = rng.random() < 0.4
    leg_mat = mats.metal() if metal_legs else top_mat
    h, t = _u(rng, 0.70, 0.78), _u(rng, 0.025, 0.05)
    if rng.random() < 0.25:  # round pedestal table
        r = _u(rng, 0.4, 0.6)
        parts = [
            cylinder(r, t, top_mat, segments, base=(0, 0, h - t)),
            cylinder(_u(rng, 0.03, 0.05), h - t - 0.03, leg_mat, segments, base=(0, 0, 0.03)),
            cylinder(_u(rng, 0.2, 0.28), 0.03, leg_mat, segments),
        ]
        inner = r * 0.65  # largest square well inside the disc
        return _Piece("table", merge_parts(parts), (r, r), h, (h, inner, inner))
    w = _u(rng, 0.8, 1.8)
    d = _u(rng, 0.6, min(1.0, w))
    inset = _u(rng, 0.0, 0.08)
    parts = [box((-w / 2, -d / 2, h - t), (w / 2, d / 2, h), top_mat)]
    parts += _legs(
        w / 2 - inset, d / 2 - inset, _u(rng, 0.04, 0.07), 0.0, h - t, leg_mat, metal_legs, segments
    )
    return _Piece("table", merge_parts(parts), (w / 2, d / 2), h, (h, w / 2 - 0.05, d / 2 - 0.05))


def _chair(rng: np.random.Generator, mats: _Materials, segments: int) -> _Piece:
    metal_frame = rng.random() < 0.3
    frame = mats.metal() if metal_frame else mats.frame()
    seat_mat = mats.frame() if metal_frame else frame
    w, d = _u(rng, 0.40, 0.50), _u(rng, 0.40, 0.52)
    seat_h, seat_t, back_h, leg = (
        _u(rng, 0.42, 0.48),
        _u(rng, 0.03, 0.05),
        _u(rng, 0.80, 1.0),
        _u(rng, 0.03, 0.045),
    )
    parts = _legs(w / 2, d / 2, leg, 0.0, seat_h - seat_t, frame, metal_frame, segments)
    parts.append(box((-w / 2, -d / 2, seat_h - seat_t), (w / 2, d / 2, seat_h), seat_mat))
    if rng.random() < 0.4:
        parts.append(
            box(
                (-w / 2 + 0.02, -d / 2 + 0.02, seat_h),
                (w / 2 - 0.02, d / 2 - leg - 0.01, seat_h + 0.04),
                mats.fabric(),
            )
        )
    for sx in (-1, 1):  # back posts continue the rear legs
        x0 = sx * (w / 2 - leg / 2) - leg / 2
        parts.append(box((x0, d / 2 - leg, seat_h), (x0 + leg, d / 2, back_h), frame))
    panel_h = _u(rng, 0.15, 0.35)
    parts.append(
        box(
            (-w / 2 + leg, d / 2 - 0.8 * leg, back_h - panel_h),
            (w / 2 - leg, d / 2 - 0.2 * leg, back_h),
            seat_mat,
        )
    )
    return _Piece("chair", merge_parts(parts), (w / 2, d / 2), back_h)


def _bed(rng: np.random.Generator, mats: _Materials, segments: int) -> _Piece:
    frame, sheet, duvet, pillow = mats.frame(), mats.fabric(), mats.fabric(), mats.fabric()
    w = float(rng.choice([0.9, 1.2, 1.4, 1.6, 1.8])) + _u(rng, 0.0, 0.1)
    length, base_h, mattress = _u(rng, 1.95, 2.15), _u(rng, 0.2, 0.35), _u(rng, 0.18, 0.25)
    head_t, head_h = _u(rng, 0.04, 0.08), _u(rng, 0.9, 1.2)
    hx, hy = w / 2, length / 2
    foot = hy - head_t  # y of the headboard's front face
    parts = [box((-hx, hy - head_t, 0.0), (hx, hy, head_h), frame)]
    if rng.random() < 0.5:  # frame on legs
        leg_h = _u(rng, 0.08, 0.15)
        parts += _legs(hx, hy - head_t, 0.06, 0.0, leg_h, frame, False, segments)
        parts.append(box((-hx, -hy, leg_h), (hx, foot, base_h), frame))
    else:  # divan base
        parts.append(box((-hx, -hy, 0.0), (hx, foot, base_h), frame))
    top = base_h + mattress
    parts.append(box((-hx + 0.02, -hy + 0.02, base_h), (hx - 0.02, foot - 0.01, top), sheet))
    parts.append(box((-hx + 0.01, -hy + 0.01, top), (hx - 0.01, -hy + 0.7 * length, top + 0.04), duvet))
    n_pillows = 1 if w < 1.2 else 2
    pillow_w = (w - 0.1) / n_pillows - 0.05
    pillow_d, pillow_h = _u(rng, 0.35, 0.45), _u(rng, 0.1, 0.15)
    for k in range(n_pillows):
        x0 = -hx + 0.05 + k * (pillow_w + 0.05)
        parts.append(
            box((x0, foot - 0.05 - pillow_d, top), (x0 + pillow_w, foot - 0.05, top + pillow_h), pillow)
        )
    return _Piece("bed", merge_parts(parts), (hx, hy), max(head_h, top + pillow_h))


def _shelf(rng: np.random.Generator, mats: _Materials, segments: int) -> _Piece:
    frame = mats.frame()
    w, d, h, t = _u(rng, 0.6, 1.2), _u(rng, 0.25, 0.4), _u(rng, 1.2, 2.0), _u(rng, 0.018, 0.025)
    plinth, back_t = 0.06, 0.008
    hx, hy = w / 2, d / 2
    parts = [
        box((-hx, -hy, 0.0), (-hx + t, hy, h), frame),
        box((hx - t, -hy, 0.0), (hx, hy, h), frame),
        box((-hx + t, -hy + 0.02, 0.0), (hx - t, hy, plinth), frame),
        box((-hx + t, hy - back_t, plinth), (hx - t, hy, h - t), frame),
        box((-hx + t, -hy, h - t), (hx - t, hy, h), frame),
    ]
    n_boards = int(rng.integers(3, 6))
    levels = np.linspace(plinth, h - t, n_boards + 1)[
        :-1
    ]  # bottom of each board; the top panel closes the last gap
    book_mats = [mats.paint() for _ in range(3)] + [mats.fabric()]
    for k, z in enumerate(levels):
        parts.append(box((-hx + t, -hy, z), (hx - t, hy - back_t, z + t), frame))
        clear = (levels[k + 1] if k + 1 < n_boards else h - t) - (z + t)
        if rng.random() < 0.8 and clear > 0.12:
            parts += _books(rng, book_mats, -hx + t, hx - t, -hy + 0.01, hy - back_t, z + t, clear - 0.02)
    return _Piece("shelf", merge_parts(parts), (hx, hy), h)


def _books(
    rng: np.random.Generator,
    materials: list[PBRMaterial],
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    z: float,
    max_h: float,
) -> list[PBRMesh]:
    """Upright books from ``x0`` filling 30-80 % of the board ``[x0, x1] x [y0, y1]`` at height ``z``."""
    books = []
    x, end = x0 + _u(rng, 0.0, 0.05), x0 + (x1 - x0) * _u(rng, 0.3, 0.8)
    while True:
        bw = _u(rng, 0.02, 0.05)
        if x + bw > end:
            return books
        bd = (y1 - y0) * _u(rng, 0.6, 0.9)
        bh = max_h * _u(rng, 0.6, 0.95)
        books.append(box((x, y0, z), (x + bw, y0 + bd, z + bh), materials[rng.integers(len(materials))]))
        x += bw + (0.0 if rng.random() < 0.8 else _u(rng, 0.01, 0.06))


def _sofa(rng: np.random.Generator, mats: _Materials, segments: int) -> _Piece:
    cover, leg_mat = mats.fabric(), (mats.metal() if rng.random() < 0.5 else mats.wood())
    w, d, seat = _u(rng, 1.4, 2.4), _u(rng, 0.8, 1.0), _u(rng, 0.40, 0.46)
    back_h, arm_w, arm_h = _u(rng, 0.75, 0.9), _u(rng, 0.12, 0.2), _u(rng, 0.55, 0.65)
    back_t, leg_h, cushion = _u(rng, 0.15, 0.25), _u(rng, 0.05, 0.1), 0.12
    hx, hy = w / 2, d / 2
    base_top = seat - cushion
    parts = _legs(hx - 0.05, hy - 0.05, 0.05, 0.0, leg_h, leg_mat, True, segments)
    parts.append(box((-hx, -hy, leg_h), (hx, hy, base_top), cover))
    parts.append(box((-hx, hy - back_t, base_top), (hx, hy, back_h), cover))
    for sx in (-1, 1):
        parts.append(
            box(
                (min(sx * hx, sx * (hx - arm_w)), -hy, base_top),
                (max(sx * hx, sx * (hx - arm_w)), hy - back_t, arm_h),
                cover,
            )
        )
    n = 3 if w > 1.9 else 2
    inner = np.linspace(-hx + arm_w, hx - arm_w, n + 1)
    for a, b in zip(inner[:-1], inner[1:]):
        parts.append(box((a + 0.005, -hy + 0.02, base_top), (b - 0.005, hy - back_t, seat), cover))
    return _Piece("sofa", merge_parts(parts), (hx, hy), back_h)


def _cabinet(rng: np.random.Generator, mats: _Materials, segments: int) -> _Piece:
    body = mats.frame()
    fronts = body if rng.random() < 0.7 else mats.paint()
    handle = mats.metal()
    tall = rng.random() < 0.3
    if tall:
        w, d, h = _u(rng, 0.8, 1.6), _u(rng, 0.5, 0.62), _u(rng, 1.6, 2.1)
    else:
        w, d, h = _u(rng, 0.4, 1.2), _u(rng, 0.35, 0.6), _u(rng, 0.45, 1.0)
    hx, hy, plinth = w / 2, d / 2, _u(rng, 0.05, 0.1)
    y_handle, y_front, y_body = -hy, -hy + 0.025, -hy + 0.045  # handles protrude 25 mm from 20 mm fronts
    parts = [
        box((-hx + 0.03, y_body + 0.03, 0.0), (hx - 0.03, hy - 0.01, plinth), body),
        box((-hx, y_body, plinth), (hx, hy, h), body),
    ]
    gap = 0.004
    if tall or rng.random() < 0.5:  # doors side by side, vertical bar handles near the meeting edges
        edges = np.linspace(-hx, hx, max(1, round(w / 0.5)) + 1)
        for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            parts.append(box((a + gap, y_front, plinth + gap), (b - gap, y_body, h - gap), fronts))
            hx_handle = b - 0.05 if k % 2 == 0 else a + 0.05
            zc = min(plinth + (h - plinth) / 2, 1.0)
            parts.append(
                box((hx_handle - 0.008, y_handle, zc - 0.08), (hx_handle + 0.008, y_front, zc + 0.08), handle)
            )
    else:  # drawers, horizontal bar handles
        levels = np.linspace(plinth, h, int(rng.integers(2, 5)) + 1)
        for a, b in zip(levels[:-1], levels[1:]):
            parts.append(box((-hx + gap, y_front, a + gap), (hx - gap, y_body, b - gap), fronts))
            zc, bar = (a + b) / 2, min(0.2, w / 3)
            parts.append(box((-bar / 2, y_handle, zc - 0.008), (bar / 2, y_front, zc + 0.008), handle))
    top = None if h > 1.2 else (h, hx - 0.03, hy - 0.05)
    return _Piece("cabinet", merge_parts(parts), (hx, hy), h, top)


def _floor_lamp(rng: np.random.Generator, mats: _Materials, segments: int) -> _Piece:
    metal, shade_mat = mats.metal(), (mats.fabric() if rng.random() < 0.6 else mats.paint())
    base_r, base_t, pole_r = _u(rng, 0.12, 0.18), _u(rng, 0.02, 0.03), _u(rng, 0.01, 0.018)
    pole_h, shade_h = _u(rng, 1.25, 1.6), _u(rng, 0.2, 0.32)
    r_bottom, r_top = _u(rng, 0.17, 0.25), _u(rng, 0.09, 0.15)
    shade_z = pole_h - 0.6 * shade_h  # the shade hides the top of the pole
    parts = [
        cylinder(base_r, base_t, metal, segments),
        cylinder(pole_r, pole_h - base_t, metal, segments, base=(0, 0, base_t)),
        frustum(r_bottom, r_top, shade_h, shade_mat, segments, base=(0, 0, shade_z)),
    ]
    r = max(base_r, r_bottom)
    return _Piece("lamp", merge_parts(parts), (r, r), shade_z + shade_h)


def _table_lamp(rng: np.random.Generator, mats: _Materials, segments: int) -> _Piece:
    body, metal, shade_mat = (
        mats.ceramic(),
        mats.metal(),
        (mats.fabric() if rng.random() < 0.6 else mats.paint()),
    )
    body_h, shade_h = _u(rng, 0.15, 0.3), _u(rng, 0.14, 0.2)
    r_base, r_shade = _u(rng, 0.06, 0.09), _u(rng, 0.12, 0.17)
    parts = [
        frustum(r_base, _u(rng, 0.03, 0.05), body_h, body, segments),
        cylinder(0.008, 0.06, metal, segments, base=(0, 0, body_h)),
        frustum(r_shade, _u(rng, 0.07, 0.11), shade_h, shade_mat, segments, base=(0, 0, body_h + 0.04)),
    ]
    return _Piece("lamp", merge_parts(parts), (r_shade, r_shade), body_h + 0.04 + shade_h)


def _vase(rng: np.random.Generator, mats: _Materials, segments: int, scale: float = 1.0) -> _Piece:
    glaze = mats.ceramic()
    r_foot, r_belly, h = _u(rng, 0.04, 0.08) * scale, _u(rng, 0.07, 0.12) * scale, _u(rng, 0.15, 0.3) * scale
    neck_r, neck_h = r_belly * _u(rng, 0.4, 0.7), _u(rng, 0.03, 0.08) * scale
    parts = [
        frustum(r_foot, r_belly, h * 0.6, glaze, segments),
        frustum(r_belly, neck_r, h * 0.4, glaze, segments, base=(0, 0, h * 0.6)),
        cylinder(neck_r, neck_h, glaze, segments, base=(0, 0, h)),
    ]
    return _Piece("vase", merge_parts(parts), (r_belly, r_belly), h + neck_h)


# ---------------------------------------------------------------------------------------------- placement
def _axes(yaw: float) -> np.ndarray:
    """``[2, 2]`` rows: the local x and y axes of a footprint rotated by ``yaw`` about z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s], [-s, c]])


class _Footprints:
    """Oriented rectangles on one surface; overlap test by the separating-axis theorem, vectorised."""

    def __init__(self) -> None:
        self.center = np.zeros((0, 2))
        self.axes = np.zeros((0, 2, 2))
        self.half = np.zeros((0, 2))

    def add(self, center: np.ndarray, yaw: float, half: np.ndarray) -> None:
        self.center = np.vstack([self.center, center])
        self.axes = np.concatenate([self.axes, _axes(yaw)[None]])
        self.half = np.vstack([self.half, half])

    def hits(self, center: np.ndarray, yaw: float, half: np.ndarray, margin: float) -> bool:
        """Whether the rectangle comes closer than ``margin`` to any stored one."""
        if len(self.center) == 0:
            return False
        own = _axes(yaw)
        n = len(self.center)
        test_axes = np.concatenate([np.broadcast_to(own, (n, 2, 2)), self.axes], axis=1)  # [N, 4, 2]
        dist = np.abs(np.einsum("nkj,nj->nk", test_axes, self.center - center))
        r_own = np.abs(test_axes @ own.T) @ half  # [N, 4]
        r_other = np.einsum("nkm,nm->nk", np.abs(test_axes @ self.axes.transpose(0, 2, 1)), self.half)
        separated = dist > r_own + r_other + margin
        return bool(np.any(~separated.any(axis=1)))


@dataclass
class _Support:
    """A flat top that small pieces can stand on."""

    owner: str
    z: float
    center: np.ndarray
    yaw: float
    half: np.ndarray
    items: _Footprints = field(default_factory=_Footprints)


@dataclass
class _Placed:
    name: str
    piece: _Piece
    center: np.ndarray
    yaw: float
    base_z: float = 0.0
    support: str | None = None

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "kind": self.piece.kind,
            "center": [float(c) for c in self.center],
            "yaw": float(self.yaw),
            "half_extents": [float(h) for h in self.piece.half],
            "base_z": float(self.base_z),
            "height": float(self.piece.height),
            "support": self.support,
        }


_BUILDERS = {
    "table": _table,
    "chair": _chair,
    "bed": _bed,
    "shelf": _shelf,
    "sofa": _sofa,
    "cabinet": _cabinet,
    "lamp": _floor_lamp,
}  # vases: see _floor_piece
_KIND_WEIGHTS = {
    "bed": 0.06,
    "sofa": 0.08,
    "shelf": 0.10,
    "cabinet": 0.16,
    "table": 0.15,
    "chair": 0.17,
    "lamp": 0.16,
    "vase": 0.12,
}  # dict order = placement order: large pieces first
_AGAINST_WALL = {
    "bed": 0.95,
    "sofa": 0.6,
    "shelf": 0.95,
    "cabinet": 0.85,
    "table": 0.2,
    "chair": 0.0,
    "lamp": 0.3,
    "vase": 0.3,
}
_MAX_PER_ROOM = {"bed": 2, "sofa": 2}
_SMALL_ON_TOP = {"lamp": _table_lamp, "vase": _vase}
_WALL_MARGIN = 0.02  # gap between a piece and the walls
_PIECE_MARGIN = 0.05  # gap between floor pieces


class _Room:
    """Furnishing state of one room: free floor, supports and placed pieces."""

    def __init__(
        self,
        rng: np.random.Generator,
        width: float,
        length: float,
        height: float,
        mats: _Materials,
        segments: int,
    ) -> None:
        self.rng, self.width, self.length, self.height = rng, width, length, height
        self.mats, self.segments = mats, segments
        self.floor = _Footprints()
        self.supports: list[_Support] = []
        self.placed: list[_Placed] = []

    def _name(self, kind: str) -> str:
        return f"{kind}_{len(self.placed)}"

    def _fits_room(self, center: np.ndarray, yaw: float, half: np.ndarray) -> bool:
        ext = np.abs(_axes(yaw).T) @ half  # rotated rectangle's axis-aligned half extents
        lo, hi = center - ext, center + ext
        return bool(
            lo.min() >= _WALL_MARGIN
            and hi[0] <= self.width - _WALL_MARGIN
            and hi[1] <= self.length - _WALL_MARGIN
        )

    def _wall_pose(self, half: np.ndarray) -> tuple[np.ndarray, float] | None:
        """A pose with the piece's back (local +y) against a wall chosen proportionally to its length."""
        w, length, rng = self.width, self.length, self.rng
        spans = np.array([w, length, w, length])
        wall = int(rng.choice(4, p=spans / spans.sum()))
        hx, hy = half
        along_hi = spans[wall] - hx - _WALL_MARGIN
        if along_hi < hx + _WALL_MARGIN:
            return None
        s = _u(rng, hx + _WALL_MARGIN, along_hi)
        off = hy + _WALL_MARGIN
        # (centre, yaw) per wall: south y=0, east x=W, north y=L, west x=0; yaw turns local +y to the wall.
        poses = (
            ((s, off), np.pi),
            ((w - off, s), -np.pi / 2),
            ((s, length - off), 0.0),
            ((off, s), np.pi / 2),
        )
        center, yaw = poses[wall]
        return np.array(center, dtype=np.float64), yaw

    def _free_pose(self, half: np.ndarray) -> tuple[np.ndarray, float] | None:
        rng = self.rng
        yaw = float(rng.integers(4)) * np.pi / 2 if rng.random() < 0.8 else _u(rng, 0.0, 2 * np.pi)
        ext = np.abs(_axes(yaw).T) @ half + _WALL_MARGIN
        room = np.array([self.width, self.length])
        if np.any(2 * ext > room):
            return None
        return rng.uniform(ext, room - ext), yaw

    def place_on_floor(self, piece: _Piece, attempts: int = 25) -> _Placed | None:
        half = np.asarray(piece.half)
        against = self.rng.random() < _AGAINST_WALL[piece.kind]
        for _ in range(attempts):
            pose = self._wall_pose(half) if against else self._free_pose(half)
            if pose is None:
                continue
            center, yaw = pose
            if self._fits_room(center, yaw, half) and not self.floor.hits(center, yaw, half, _PIECE_MARGIN):
                return self._commit(piece, center, yaw)
        return None

    def place_at(self, piece: _Piece, center: np.ndarray, yaw: float, margin: float) -> _Placed | None:
        half = np.asarray(piece.half)
        if self._fits_room(center, yaw, half) and not self.floor.hits(center, yaw, half, margin):
            return self._commit(piece, center, yaw)
        return None

    def _commit(self, piece: _Piece, center: np.ndarray, yaw: float) -> _Placed:
        placed = _Placed(self._name(piece.kind), piece, center, yaw)
        self.floor.add(center, yaw, np.asarray(piece.half))
        self.placed.append(placed)
        if piece.top is not None:
            z, hx, hy = piece.top
            self.supports.append(_Support(placed.name, z, center, yaw, np.array([hx, hy])))
        return placed

    def place_on_top(self, piece: _Piece, attempts: int = 10) -> _Placed | None:
        """Stand a small piece on a random support, clear of other pieces there and below the ceiling."""
        half = np.asarray(piece.half)
        fitting = [
            s
            for s in self.supports
            if np.all(s.half >= half + 0.01) and s.z + piece.height < self.height - 0.1
        ]
        if not fitting:
            return None
        support = fitting[self.rng.integers(len(fitting))]
        for _ in range(attempts):
            local = self.rng.uniform(-(support.half - half), support.half - half)
            yaw_local = float(self.rng.integers(4)) * np.pi / 2
            if support.items.hits(local, yaw_local, half, 0.02):
                continue
            support.items.add(local, yaw_local, half)
            center = support.center + _axes(support.yaw).T @ local
            placed = _Placed(
                self._name(piece.kind), piece, center, support.yaw + yaw_local, support.z, support.owner
            )
            self.placed.append(placed)
            return placed
        return None

    def chairs_around(self, table: _Placed, budget: int) -> None:
        """Up to ``budget`` identical chairs facing the table, at random slots along its sides and ends."""
        if budget <= 0:
            return
        chair = _chair(self.rng, self.mats, self.segments)
        hx, hy = table.piece.half
        slots = []
        for side in (-1, 1):
            n = max(1, int(2 * hx // 0.6))
            slots += [(x, side * hy, 0.0, float(side)) for x in np.linspace(-hx, hx, n + 2)[1:-1]]
        slots += [(side * hx, 0.0, float(side), 0.0) for side in (-1, 1)]
        order = self.rng.permutation(len(slots))[: int(self.rng.integers(1, min(budget, len(slots)) + 1))]
        table_axes = _axes(table.yaw).T
        for k in order:
            sx, sy, nx, ny = slots[k]
            gap = _u(self.rng, 0.03, 0.12) + chair.half[1]
            center = table.center + table_axes @ np.array([sx + nx * gap, sy + ny * gap])
            # The chair's front (local -y) faces the table: its local +y points along the outward normal n.
            yaw = table.yaw + float(np.arctan2(-nx, ny))
            self.place_at(chair, center, yaw, margin=0.01)


def _floor_piece(room: _Room, kind: str) -> _Piece:
    """A new piece of ``kind`` to stand on the floor (vases there are floor vases, about twice the size)."""
    if kind == "vase":
        return _vase(room.rng, room.mats, room.segments, scale=_u(room.rng, 1.8, 2.6))
    return _BUILDERS[kind](room.rng, room.mats, room.segments)


def _furnish(room: _Room, target: int, minimum: int) -> None:
    """Place ``target`` pieces as far as space allows, then top up with small pieces up to ``minimum``."""
    rng = room.rng
    kinds = list(_KIND_WEIGHTS)
    weights = np.array(list(_KIND_WEIGHTS.values()))
    plan = sorted(rng.choice(len(kinds), size=target, p=weights / weights.sum()))
    for k in plan:
        if len(room.placed) >= target:
            return
        kind = kinds[k]
        if sum(p.piece.kind == kind for p in room.placed) >= _MAX_PER_ROOM.get(kind, target):
            continue
        if kind in _SMALL_ON_TOP and room.supports and rng.random() < 0.6:
            if room.place_on_top(_SMALL_ON_TOP[kind](rng, room.mats, room.segments)) is not None:
                continue
        placed = room.place_on_floor(_floor_piece(room, kind))
        if placed is not None and kind == "table" and rng.random() < 0.7:
            room.chairs_around(placed, target - len(room.placed))
    for _ in range(60):
        if len(room.placed) >= minimum:
            return
        kind = ("lamp", "vase", "chair")[rng.integers(3)]
        if kind in _SMALL_ON_TOP and room.place_on_top(_SMALL_ON_TOP[kind](rng, room.mats, room.segments)):
            continue
        room.place_on_floor(_floor_piece(room, kind))


# ---------------------------------------------------------------------------------------------- shell
@dataclass(frozen=True)
class _Opening:
    """A hole through one wall. ``start``/``end`` run along the wall (x for south/north, y for east/west)."""

    kind: str
    wall: str
    start: float
    end: float
    bottom: float
    top: float


_WALLS = ("south", "east", "north", "west")  # y = 0, x = W, y = L, x = 0
_CORNER_MARGIN = 0.3  # openings keep this far from the room corners and from each other


def _sample_openings(
    rng: np.random.Generator, width: float, length: float, height: float, config: SyntheticRoomConfig
) -> list[_Opening]:
    n_doors = int(rng.integers(config.door_count_range[0], config.door_count_range[1] + 1))
    n_windows = int(rng.integers(config.window_count_range[0], config.window_count_range[1] + 1))
    spans = np.array([width, length, width, length])
    openings: list[_Opening] = []
    for kind in ["door"] * n_doors + ["window"] * n_windows:
        if kind == "door":
            size, bottom, top = _u(rng, 0.8, 1.0), 0.0, config.door_height
        else:
            size, bottom = _u(rng, 0.8, 1.6), config.window_sill
            top = min(_u(rng, 2.0, 2.3), height - 0.15)
        for _ in range(20):
            wall = _WALLS[int(rng.choice(4, p=spans / spans.sum()))]
            span = spans[_WALLS.index(wall)]
            if span - 2 * _CORNER_MARGIN < size:
                continue
            start = _u(rng, _CORNER_MARGIN, span - _CORNER_MARGIN - size)
            clash = any(
                o.wall == wall and start < o.end + _CORNER_MARGIN and o.start < start + size + _CORNER_MARGIN
                for o in openings
            )
            if not clash:
                openings.append(_Opening(kind, wall, start, start + size, bottom, top))
                break
    return openings


# Shell cell labels (0 = empty); label k uses material and part slot k - 1.
_SHELL_PARTS = ("floor", "ceiling", "wall_south", "wall_east", "wall_north", "wall_west")


def _room_shell(
    width: float,
    length: float,
    height: float,
    has_ceiling: bool,
    openings: list[_Opening],
    config: SyntheticRoomConfig,
    materials: tuple[PBRMaterial, PBRMaterial, PBRMaterial],
) -> tuple[PBRMesh, np.ndarray]:
    """Watertight shell around the interior -> mesh and ``label [F]`` (1-based into _SHELL_PARTS)."""
    t, s = config.wall_thickness, config.slab_thickness
    along_x = [v for o in openings if o.wall in ("south", "north") for v in (o.start, o.end)]
    along_y = [v for o in openings if o.wall in ("east", "west") for v in (o.start, o.end)]
    xs = np.unique([-t, 0.0, width, width + t, *along_x])
    ys = np.unique([-t, 0.0, length, length + t, *along_y])
    zs = np.unique(
        [
            -s,
            0.0,
            height,
            *([height + s] if has_ceiling else []),
            *[v for o in openings for v in (o.bottom, o.top)],
        ]
    )
    x, y, z = np.meshgrid(
        (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2, (zs[:-1] + zs[1:]) / 2, indexing="ij"
    )
    labels = np.zeros(x.shape, dtype=np.int32)
    labels[z < 0] = 1
    labels[z > height] = 2
    band = (z > 0) & (z < height)
    inner_y = (y > 0) & (y < length)
    walls = {
        "south": band & (y < 0),
        "east": band & (x > width) & inner_y,
        "north": band & (y > length),
        "west": band & (x < 0) & inner_y,
    }
    for k, name in enumerate(_WALLS):
        labels[walls[name]] = 3 + k
    for o in openings:
        along = x if o.wall in ("south", "north") else y
        labels[walls[o.wall] & (along > o.start) & (along < o.end) & (z > o.bottom) & (z < o.top)] = 0
    floor, ceiling, wall = materials
    return grid_cell_surface((xs, ys, zs), labels, [floor, ceiling, wall, wall, wall, wall])


# ---------------------------------------------------------------------------------------------- room
def _pose_matrix(center: np.ndarray, yaw: float, base_z: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = _axes(yaw).T
    m[:3, 3] = (center[0], center[1], base_z)
    return m


def generate_room(seed: int, index: int, config: SyntheticRoomConfig | None = None) -> Scene:
    """Build room ``index`` of the dataset with ``seed``; the same ``(seed, index, config)`` gives identical
    arrays and materials. Both must be non-negative integers."""
    config = config or SyntheticRoomConfig()
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed}, {index}")
    rng = np.random.default_rng([seed, index])
    width, length, height = (
        _u(rng, *config.width_range),
        _u(rng, *config.length_range),
        _u(rng, *config.height_range),
    )
    has_ceiling = bool(rng.random() < config.ceiling_probability)
    openings = _sample_openings(rng, width, length, height, config)
    mats = _Materials(rng, config)
    shell, shell_label = _room_shell(
        width, length, height, has_ceiling, openings, config, (mats.floor(), mats.ceiling(), mats.wall())
    )

    room = _Room(rng, width, length, height, mats, config.cylinder_segments)
    for o in openings:  # keep the floor in front of each door clear
        if o.kind != "door":
            continue
        mid, half = (o.start + o.end) / 2, np.array([(o.end - o.start) / 2, 0.4])
        center = {
            "south": (mid, 0.4),
            "north": (mid, length - 0.4),
            "west": (0.4, mid),
            "east": (width - 0.4, mid),
        }
        room.floor.add(np.array(center[o.wall]), 0.0 if o.wall in ("south", "north") else np.pi / 2, half)
    lo, hi = config.furniture_count_range
    area_cap = int(np.clip(round(width * length * 0.65), lo, hi))  # small rooms cannot hold 30 pieces
    _furnish(room, int(rng.integers(lo, area_cap + 1)), lo)

    shell_parts = [name for k, name in enumerate(_SHELL_PARTS) if has_ceiling or name != "ceiling"]
    label_to_part = np.array([-1] + [shell_parts.index(n) if n in shell_parts else -1 for n in _SHELL_PARTS])
    meshes = [shell]
    face_part = [label_to_part[shell_label]]
    for k, placed in enumerate(room.placed):
        meshes.append(placed.piece.mesh.transformed(_pose_matrix(placed.center, placed.yaw, placed.base_z)))
        face_part.append(np.full(placed.piece.mesh.num_faces, len(shell_parts) + k, dtype=np.int32))
    return Scene(
        scene_id=f"synthetic_{seed}_{index}",
        mesh=merge_parts(meshes),
        floor_polygon=np.array([[0.0, 0.0], [width, 0.0], [width, length], [0.0, length]]),
        height=height,
        has_ceiling=has_ceiling,
        face_part=np.concatenate(face_part),
        part_names=shell_parts + [p.name for p in room.placed],
        metadata={
            "source": "synthetic",
            "seed": seed,
            "index": index,
            "width": width,
            "length": length,
            "openings": [vars(o).copy() for o in openings],
            "objects": [p.metadata() for p in room.placed],
        },
    )
