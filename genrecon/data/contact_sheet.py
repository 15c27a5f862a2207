"""A contact sheet of a prepared dataset: per room a floor plan with its chunk squares and a few renders
with the chunk cubes drawn in, so a person can see at a glance what was generated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from genrecon.geometry.cameras import project_points
from genrecon.geometry.chunks import Chunk

CHUNK_COLOURS = [(230, 60, 60), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
CUBE_EDGES = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7)]


def _draw_chunks_on_view(image: np.ndarray, w2c: np.ndarray, K: np.ndarray, chunks: list[Chunk]) -> Image.Image:
    """The render with every chunk cube's 12 edges projected onto it (edges behind the camera are skipped)."""
    canvas = Image.fromarray(image[..., :3]).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    h, w = image.shape[:2]
    for ci, chunk in enumerate(chunks):
        corners = chunk.corners_world()[:8]
        uv, depth = project_points(corners, w2c, K)
        colour = CHUNK_COLOURS[ci % len(CHUNK_COLOURS)]
        for a, b in CUBE_EDGES:
            if depth[a] > 1e-3 and depth[b] > 1e-3:
                draw.line([(uv[a, 0] * w, uv[a, 1] * h), (uv[b, 0] * w, uv[b, 1] * h)], fill=colour, width=2)
    return canvas


def _floor_plan(polygon: np.ndarray, chunks: list[Chunk], cameras_xy: np.ndarray, size: int) -> Image.Image:
    """Top view: room outline (grey), chunk squares (colours), camera positions (black dots)."""
    pts = [polygon] + [c.corners_world()[:8, :2] for c in chunks] + [cameras_xy]
    allp = np.concatenate([p for p in pts if len(p)])
    lo, hi = allp.min(0) - 0.2, allp.max(0) + 0.2
    scale = (size - 1) / float((hi - lo).max())

    def to_px(xy: np.ndarray) -> list[tuple[float, float]]:
        p = (xy - lo) * scale
        return [(float(x), float(size - 1 - y)) for x, y in p]

    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.polygon(to_px(polygon), outline=(120, 120, 120), width=2)
    for ci, chunk in enumerate(chunks):
        bottom = chunk.corners_world()[[0, 2, 6, 4], :2]  # the z = -0.5 face, in cyclic order
        draw.polygon(to_px(bottom), outline=CHUNK_COLOURS[ci % len(CHUNK_COLOURS)], width=2)
    for x, y in to_px(cameras_xy):
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(0, 0, 0))
    return canvas


def write_contact_sheet(rooms: list[dict], path: str | Path, tile: int = 192) -> Path:
    """One row per room: floor plan, then its preview renders with chunk cubes.

    ``rooms``: dicts with ``scene_id``, ``floor_polygon [P,2]``, ``chunks``, ``camera_xy [N,2]``,
    ``views [V,H,W,4]``, ``w2c [V,4,4]``, ``K [V,3,3]``.
    """
    if not rooms:
        raise ValueError("no rooms to show on the contact sheet")
    cols = 1 + max(len(r["views"]) for r in rooms)
    sheet = Image.new("RGB", (cols * tile, len(rooms) * (tile + 16)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, room in enumerate(rooms):
        y = row * (tile + 16)
        draw.text((4, y + 2), f"{room['scene_id']}: {len(room['chunks'])} chunks", fill=(0, 0, 0))
        plan = _floor_plan(np.asarray(room["floor_polygon"]), room["chunks"], np.asarray(room["camera_xy"]), tile)
        sheet.paste(plan, (0, y + 16))
        for col, (view, w2c, K) in enumerate(zip(room["views"], room["w2c"], room["K"]), start=1):
            img = _draw_chunks_on_view(view, w2c, K, room["chunks"]).resize((tile, tile), Image.Resampling.BILINEAR)
            sheet.paste(img, (col * tile, y + 16))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
