"""A room scene: the common output of every scene source (synthetic generator and dataset importers)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from genrecon.geometry.mesh import PBRMesh


@dataclass
class Scene:
    """One room in the world frame (z-up, metres, floor at z = 0).

    ``floor_polygon [P, 2]`` is the room's interior outline (counter-clockwise, xy), used for camera placement
    and chunk sampling; ``face_part [F]`` labels each face of ``mesh`` with an index into ``part_names`` so the
    reconstruction can be edited per object.
    """

    scene_id: str
    mesh: PBRMesh
    floor_polygon: np.ndarray
    height: float
    has_ceiling: bool = True
    face_part: np.ndarray | None = None
    part_names: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.floor_polygon = np.asarray(self.floor_polygon, dtype=np.float64).reshape(-1, 2)
        if len(self.floor_polygon) < 3:
            raise ValueError(f"scene {self.scene_id}: floor_polygon needs at least 3 points")
        if self.height <= 0:
            raise ValueError(f"scene {self.scene_id}: height must be positive, got {self.height}")
        if self.face_part is not None:
            self.face_part = np.asarray(self.face_part, dtype=np.int32).reshape(-1)
            if len(self.face_part) != self.mesh.num_faces:
                raise ValueError(f"scene {self.scene_id}: face_part must have one entry per face")

    @property
    def floor_area(self) -> float:
        """Shoelace area of the floor polygon in m²."""
        x, y = self.floor_polygon[:, 0], self.floor_polygon[:, 1]
        return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))

    @property
    def floor_bounds(self) -> np.ndarray:
        """``[2, 2]`` xy min and max of the floor polygon."""
        return np.stack([self.floor_polygon.min(0), self.floor_polygon.max(0)])

    def contains_xy(self, xy: np.ndarray) -> np.ndarray:
        """Even-odd point-in-polygon test for ``xy [M, 2]`` -> bool ``[M]``."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        poly = self.floor_polygon
        x, y = xy[:, 0:1], xy[:, 1:2]
        x0, y0 = poly[:, 0][None], poly[:, 1][None]
        x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        return np.logical_and(crosses, x < x_at).sum(1) % 2 == 1
