"""Depth of every view's patches from the input points (a deviation from GenRecon, off by default).

Session 22 measured what exact depth is worth to the sparse-structure flow: handed the true depth of the first
surface under every patch (``depth_cue_oracle``), its validation IoU at step 1,000 was 0.557 against the
recipe's 0.275. Posed images reach ``infer.py`` with points (COLMAP's ``points3D``, or the back-projected depth
of a generated scene) that the published pipeline uses only to tile the scene. Projected into each view and
z-buffered per patch cell (:func:`genrecon.models.depth_cue.cell_zbuffer`), they give such depths wherever they
are dense enough; the depth cue takes them there and keeps its head's estimate elsewhere.

Training chunks carry no points, so :func:`simulate_sfm_points` makes them from the chunk's occupancy: the
surface voxels that some conditioning view sees, a random share of them, jittered. That is what
structure-from-motion returns on textured surfaces; the share is drawn per chunk so one model serves dense and
sparse inputs.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from genrecon.geometry.stereo import stereo_points, sweep_stereo
from genrecon.models.depth_cue import cell_index, cell_zbuffer
from genrecon.models.projection import coords_to_points


# Where a point-depth flow's points come from (SimulatedPoints.source).
SOURCES = ("occupancy", "stereo", "mixed", "none", "stereo_oracle")


@dataclass(frozen=True)
class SimulatedPoints:
    """How training chunks get their points (:func:`simulate_sfm_points`).

    Attributes:
        keep: ``(low, high)`` share of the visible surface voxels a training chunk keeps, log-uniform per chunk.
        eval_keep: the share in evaluation (validation, scoring), drawn with a fixed seed.
        noise: standard deviation of the points' Gaussian jitter, in voxels of the occupancy grid.
        tolerance: how far behind a view's nearest point in a z-buffer cell, in voxels, a point still counts as
            seen (a slanted surface spans several voxels within one cell).
        source: ``"occupancy"`` (the above) or ``"stereo"``: the points plane-sweep stereo finds in the batch's
            own views (:mod:`genrecon.geometry.stereo`), where they are textured; keep and noise are then unused.
            ``"mixed"``: in training a share ``stereo_share`` of each batch's chunks takes stereo points, the rest
            simulated ones (stereo halves the step rate); in evaluation every chunk takes stereo points.
            ``"none"``: no points at all, for scoring a point-trained flow on its views alone (training with it
            would only teach the point pathways to stay silent). ``"stereo_oracle"``: a diagnostic that needs the
            occupancy: each stereo point moved to the nearest occupied voxel within one voxel of it, or dropped
            (:func:`snap_to_occupancy`), so the points are where stereo finds them but exact: what stereo's
            coverage alone is worth to the flow.
        stereo_share: the share of a training batch's chunks (rounded, at least one) with stereo points, for
            ``source: mixed``.
        stereo_size: image edge (pixels) the views are resized to for stereo.
        stereo_depths: candidate camera depths of the sweep, uniform over the depth cue's range.
        stereo_min_score: mean NCC a pixel needs to become a point.
        stereo_targets: the nearest other views each view is matched with (one H100 step of the small preset,
            16 views, all 15 targets: 3.2 × the recipe's).
        stereo_refine: place each stereo depth between its candidates (the parabola through the three scores).
        stereo_consistent: how many other views must confirm a stereo pixel's depth (0: none; 1 on 4 synthetic
            validation chunks of 8 views: 32 % of the points stay, within a voxel of the surface 91 % against 67 %).
        stereo_horizontal: also sweep ``stereo_depths`` horizontal planes (the frame is z-up) over the chunk's
            height and its margin, keeping each pixel's better match: exact windows on floors, table tops and beds
            seen at grazing angles, which fronto-parallel windows shear (session 27, 4 synthetic chunks, 128 px, 192
            candidates, NCC ≥ 0.5, confirmed by two views: 5.6 % of the true voxels within a voxel of a point, 98 %
            of the points within a voxel of a surface; by one view: 15.6 % and 89 %).
        stereo_vertical: also sweep ``stereo_depths`` vertical planes in each of this many orientations (normals
            ``(cos θ, sin θ, 0)``, θ = k·180°/n) over the chunk and its margin, for walls and furniture sides seen
            at grazing angles (63 % of the true voxels of session 30's held-out chunks). Chunks have any yaw, so no
            orientation is known in advance; a wall lies at most 90°/n from a swept one. 0: none. Off: on 4
            synthetic chunks (stereo_h2's settings) 4 orientations covered 9.6 % of the seen vertical voxels
            against 7.1 %, but only 70 % of the points lay within a voxel of a surface against 99.5 %, likely
            because most seen walls are plain and no plane family can match them; a points-trained flow scored
            with them did not change (−0.001 ± 0.001 IoU on 12 chunks; session 30).
        depth_cue: whether the points replace the depth cue's depths where they land (False: they only feed the
            model's ``point_grid``).
        outliers: share of the simulated points moved further, as stereo's mismatches are (refined stereo confirmed
            by one view: 16 % of its points more than a voxel from any surface, 4 % more than two).
        outlier_noise: standard deviation of those points' extra Gaussian displacement, in voxels.
        block_keep: in training, each chunk keeps the points of only a share of its ``block_size``³-voxel blocks,
            uniform in ``[block_keep, 1]`` per chunk (1: every block): stereo finds points on textured surfaces
            and none on plain walls, and a flow trained on points spread evenly over the seen surface reads a
            seen region without points as empty (session 27: with stereo points its far misses grew from 45 % to
            49 % of the true voxels).
        block_size: edge of those blocks, in voxels of the occupancy grid.
    """

    keep: tuple[float, float] = (0.05, 1.0)
    eval_keep: float = 0.25
    noise: float = 0.5
    tolerance: float = 1.5
    source: str = "occupancy"
    stereo_share: float = 0.25
    stereo_size: int = 96
    stereo_depths: int = 48
    stereo_min_score: float = 0.8
    stereo_targets: int = 4
    stereo_refine: bool = False
    stereo_consistent: int = 0
    stereo_horizontal: bool = False
    stereo_vertical: int = 0
    depth_cue: bool = True
    outliers: float = 0.0
    outlier_noise: float = 3.0
    block_keep: float = 1.0
    block_size: int = 8

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r}: expected one of {SOURCES}")
        if not 0 < self.stereo_share <= 1:
            raise ValueError(f"stereo_share {self.stereo_share}: expected a share in (0, 1]")
        low, high = self.keep
        if not 0 < low <= high <= 1 or not 0 < self.eval_keep <= 1:
            raise ValueError(f"keep shares must lie in (0, 1] with low ≤ high: keep={self.keep}, "
                             f"eval_keep={self.eval_keep}")
        if self.noise < 0 or self.tolerance < 0 or self.outlier_noise < 0:
            raise ValueError(f"noise, tolerance and outlier_noise must be ≥ 0, got {self.noise}, {self.tolerance}, "
                             f"{self.outlier_noise}")
        if not 0 <= self.block_keep <= 1 or self.block_size < 1:
            raise ValueError(f"block_keep {self.block_keep} must lie in [0, 1] and block_size {self.block_size} be "
                             "at least 1")
        if not 0 <= self.outliers <= 1:
            raise ValueError(f"outliers {self.outliers}: expected a share in [0, 1]")
        if self.stereo_vertical < 0:
            raise ValueError(f"stereo_vertical {self.stereo_vertical}: expected a number of orientations ≥ 0")
        if not 0 <= self.stereo_consistent < self.stereo_targets + 1:
            raise ValueError(f"stereo_consistent {self.stereo_consistent}: expected 0 to stereo_targets "
                             f"({self.stereo_targets})")


def seen_points(u: Tensor, v: Tensor, depth: Tensor, valid: Tensor, batch_idx: Tensor, num_samples: int,
                cells: int, tolerance: float) -> Tensor:
    """Whether each point ``[K]`` is seen by at least one view: within ``tolerance`` (depth units) of the nearest
    point in its z-buffer cell. u, v, depth, valid ``[K, N]`` (``Projection.project``), batch_idx ``[K]``."""
    zbuf = cell_zbuffer(u, v, depth, valid, batch_idx, num_samples, cells)
    nearest = zbuf.flatten()[cell_index(u, v, batch_idx, u.shape[1], cells)]  # [K, N]
    return (valid & (depth <= nearest + tolerance)).any(dim=1)


def simulate_sfm_points(points: Tensor, batch_idx: Tensor, seen: Tensor, keep: Tensor, noise: float,
                        generator: torch.Generator | None = None, outliers: float = 0.0,
                        outlier_noise: float = 0.0) -> tuple[Tensor, Tensor]:
    """A share ``keep [B]`` of each sample's seen points, jittered by Gaussian ``noise`` (chunk units); a share
    ``outliers`` of them moved by a further Gaussian ``outlier_noise``.

    points ``[K, 3]``, batch_idx ``[K]``, seen ``[K]`` bool → points ``[M, 3]``, batch_idx ``[M]``.
    """
    draw = torch.rand(len(points), device=points.device, generator=generator)
    chosen = seen & (draw < keep.to(points.device)[batch_idx])
    out = points[chosen]
    if noise > 0:
        out = out + noise * torch.randn(out.shape, device=out.device, dtype=out.dtype, generator=generator)
    if outliers > 0 and outlier_noise > 0:  # drawn only when asked: the evaluation points stay as before
        moved = torch.rand(len(out), device=out.device, generator=generator) < outliers
        shift = outlier_noise * torch.randn(out.shape, device=out.device, dtype=out.dtype, generator=generator)
        out = out + moved[:, None] * shift
    return out, batch_idx[chosen]


def kept_blocks(points: Tensor, batch_idx: Tensor, num_samples: int, resolution: int, block: int, low: float,
                generator: torch.Generator | None = None) -> Tensor:
    """Whether each point ``[K]`` lies in a kept block: every sample keeps a share of its ``block``³-voxel blocks
    (of a ``resolution``³ grid over the chunk cube), the share uniform in ``[low, 1]`` per sample, each block kept
    independently. points ``[K, 3]`` in the chunk frame, batch_idx ``[K]``."""
    per_edge = -(-resolution // block)
    cell = ((points + 0.5) * resolution).floor().long().clamp(0, resolution - 1) // block
    index = (batch_idx * per_edge + cell[:, 0]) * per_edge**2 + cell[:, 1] * per_edge + cell[:, 2]
    share = low + (1 - low) * torch.rand(num_samples, device=points.device, generator=generator)
    draw = torch.rand(num_samples * per_edge**3, device=points.device, generator=generator)
    kept = draw.view(num_samples, -1) < share[:, None]
    return kept.flatten()[index]


def snap_to_occupancy(points: Tensor, batch_idx: Tensor, occupancy: Tensor) -> tuple[Tensor, Tensor]:
    """Each point ``[M, 3]`` (chunk frame) moved to the centre of the nearest occupied voxel among the 27 around
    its own, or dropped where none is: ``occupancy [B, 1, R, R, R]`` → points ``[M', 3]``, batch_idx ``[M']``."""
    r = occupancy.shape[-1]
    offsets = torch.stack(torch.meshgrid(*[torch.arange(-1, 2, device=points.device)] * 3, indexing="ij"), -1)
    cell = ((points + 0.5) * r).floor().long()  # [M, 3]
    candidates = cell[:, None] + offsets.view(1, 27, 3)  # [M, 27, 3]
    inside = ((candidates >= 0) & (candidates < r)).all(-1)
    c = candidates.clamp(0, r - 1)
    occupied = occupancy[batch_idx[:, None], 0, c[..., 0], c[..., 1], c[..., 2]] > 0.5
    centres = coords_to_points(candidates, r)
    dist = (centres - points[:, None]).norm(dim=-1).masked_fill(~(occupied & inside), float("inf"))
    best, nearest = dist.min(dim=1)
    found = best.isfinite()
    return centres[torch.arange(len(points), device=points.device), nearest][found], batch_idx[found]


def draw_keep(config: SimulatedPoints, num_samples: int, training: bool,
              generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """Share of the seen points each of ``num_samples`` chunks keeps ``[B]``: log-uniform in ``config.keep`` in
    training, ``config.eval_keep`` otherwise."""
    if not training:
        return torch.full((num_samples,), config.eval_keep, device=device)
    low, high = torch.tensor(config.keep, dtype=torch.float64).log()
    u = torch.rand(num_samples, device=device, generator=generator, dtype=torch.float64)
    return (low + (high - low) * u).exp().float()


UP = torch.tensor([0.0, 0.0, 1.0])  # the chunk frame's (and the scene's) up axis
PLANE_MARGIN = 0.1  # world planes are swept this far (chunk edges) beyond the chunk on either side


def swept_planes(config: SimulatedPoints, device: torch.device | str = "cpu") -> list[tuple[Tensor, Tensor]]:
    """The world-plane families stereo sweeps besides the fronto-parallel one, as ``(normal [3], offsets [D])``
    pairs (planes ``normal · X = offset`` of the chunk frame, ``D = stereo_depths``): horizontal planes over the
    chunk's height with ``stereo_horizontal``, and ``stereo_vertical`` orientations of vertical planes, each
    over the chunk's extent along its normal. All reach ``PLANE_MARGIN`` past the chunk."""
    families = []
    if config.stereo_horizontal:
        families.append((UP, torch.linspace(-0.5 - PLANE_MARGIN, 0.5 + PLANE_MARGIN, config.stereo_depths)))
    for k in range(config.stereo_vertical):
        c, s = math.cos(math.pi * k / config.stereo_vertical), math.sin(math.pi * k / config.stereo_vertical)
        reach = 0.5 * (abs(c) + abs(s)) + PLANE_MARGIN  # the cube's half extent along the normal, and the margin
        families.append((torch.tensor([c, s, 0.0]), torch.linspace(-reach, reach, config.stereo_depths)))
    return [(n.to(device), c.to(device)) for n, c in families]


def stereo_points_of_views(views: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor, config: SimulatedPoints,
                           max_depth: float) -> tuple[Tensor, Tensor]:
    """Points ``[M, 3]`` (the cameras' frame) with their sample ``[M]`` that plane-sweep stereo finds in ``views
    [B, N, 3, H, W]`` with ``config``'s ``stereo_*`` settings: the views resized to ``stereo_size``, candidate
    depths uniform over ``(0, max_depth]`` (the depth cue's range), then each family of :func:`swept_planes`,
    each pixel keeping its best match. w2c ``[B, N, 4, 4]``, K ``[B, N, 3, 3]``, view_mask ``[B, N]``."""
    b, n = views.shape[:2]
    size = config.stereo_size
    small = F.interpolate(views.float().flatten(0, 1), size=(size, size), mode="area").view(b, n, 3, size, size)
    depths = (torch.arange(config.stereo_depths, device=views.device) + 0.5) * (max_depth / config.stereo_depths)
    depth, score = sweep_stereo(small, w2c, K, view_mask, depths, max_targets=config.stereo_targets,
                                refine=config.stereo_refine)
    for normal, offsets in swept_planes(config, views.device):
        plane, plane_score = sweep_stereo(small, w2c, K, view_mask, offsets, max_targets=config.stereo_targets,
                                          refine=config.stereo_refine, normal=normal)
        better = plane_score > score
        depth, score = torch.where(better, plane, depth), torch.where(better, plane_score, score)
    return stereo_points(depth, score, w2c, K, view_mask, config.stereo_min_score,
                         min_consistent=config.stereo_consistent)
