"""Surface metrics between a reconstructed and a ground-truth mesh, on area-uniform point samples.

Protocol (GenRecon paper, see docs/evaluation.md): each mesh is sampled with 200k area-uniform points
(:func:`sample_mesh`); every sample is matched to its nearest sample on the other mesh
(:func:`surface_distances`), in both directions:

* Chamfer distance = ``(mean_p d(p, G) + mean_g d(g, P)) / 2`` in metres (plain, not squared, distances).
* precision = fraction of predicted samples with ``d(p, G) < threshold``; recall = fraction of ground-truth
  samples with ``d(g, P) < threshold``; ``f_arithmetic = (P + R) / 2`` (what the paper calls "F-score") and
  ``f_harmonic = 2PR / (P + R)`` (the standard F-score).
* normal consistency = ``(mean_p c(p) + mean_g c(g)) / 2`` with ``c(x) = |n_x · n_x'|`` for the nearest
  sample ``x'`` on the other mesh, and ``c(x) = 0`` where ``d(x, x') > cutoff``.

An empty prediction scores Chamfer ``inf`` and zero for everything else.

The :class:`~torchmetrics.Metric` classes hold sums of per-scene values and a scene count (all reduced by
``sum``), so under DDP each rank scores the scenes it holds and ``compute`` returns the mean over all scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torchmetrics import Metric

from genrecon.geometry.mesh import sample_surface

Points = torch.Tensor | np.ndarray

# Query points per torch.cdist block on the GPU path: [block, M] float32 distances stay ~1 GB for M = 200k.
CDIST_BLOCK = 1024


def sample_mesh(
    vertices: np.ndarray, faces: np.ndarray, n: int = 200_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform samples of a triangle mesh.

    Args:
        vertices: ``[V, 3]``; faces: ``[F, 3]``.
    Returns:
        ``points [n, 3]`` float64 and their faces' unit ``normals [n, 3]`` float64 (zero on degenerate faces).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    points, face_idx, _ = sample_surface(vertices, faces, n, np.random.default_rng(seed))
    tri = vertices[faces[face_idx]]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return points, np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)


@dataclass
class SurfaceMatch:
    """Nearest-neighbour correspondences between predicted samples ``P [N, 3]`` and ground truth ``G [M, 3]``:
    ``pred_to_gt [N]`` distances and ``pred_to_gt_idx [N]`` indices into ``G``; ``gt_to_pred [M]`` and
    ``gt_to_pred_idx [M]`` the other way. On the device of the inputs."""

    pred_to_gt: torch.Tensor
    pred_to_gt_idx: torch.Tensor
    gt_to_pred: torch.Tensor
    gt_to_pred_idx: torch.Tensor


def _as_tensor(x: Points) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def nearest_neighbors(query: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance ``[Q]`` and index ``[Q]`` of the nearest ``ref [R, 3]`` point for each ``query [Q, 3]`` point.

    CPU tensors use a k-d tree (scipy, all cores); CUDA tensors blocked ``torch.cdist``. An empty ``ref``
    gives ``inf`` distances and index -1.
    """
    if len(ref) == 0:
        return torch.full((len(query),), float("inf"), device=query.device), torch.full(
            (len(query),), -1, dtype=torch.long, device=query.device
        )
    if query.device.type == "cpu":
        dist, idx = cKDTree(ref.double().numpy()).query(query.double().numpy(), workers=-1)
        return torch.from_numpy(dist), torch.from_numpy(idx).long()
    dists, idxs = [], []
    for block in query.split(CDIST_BLOCK):
        d, i = torch.cdist(block.float(), ref.float()).min(dim=1)
        dists.append(d)
        idxs.append(i)
    return torch.cat(dists).double(), torch.cat(idxs)


def surface_distances(pred_pts: Points, gt_pts: Points) -> SurfaceMatch:
    """Nearest-neighbour matches both ways between ``pred_pts [N, 3]`` and ``gt_pts [M, 3]``."""
    pred, gt = _as_tensor(pred_pts), _as_tensor(gt_pts)
    d_pg, i_pg = nearest_neighbors(pred, gt)
    d_gp, i_gp = nearest_neighbors(gt, pred)
    return SurfaceMatch(d_pg, i_pg, d_gp, i_gp)


def _mean(x: torch.Tensor, empty: float) -> torch.Tensor:
    """Mean in float64; ``empty`` for an empty tensor (an empty prediction, not a NaN)."""
    if x.numel() == 0:
        return torch.tensor(empty, dtype=torch.float64, device=x.device)
    return x.double().mean()


def chamfer(pred_pts: Points, gt_pts: Points, match: SurfaceMatch | None = None) -> torch.Tensor:
    """Chamfer distance (scalar, metres): mean of the two directional mean nearest-neighbour distances.
    Pass ``match`` from :func:`surface_distances` to reuse its nearest-neighbour search."""
    match = match or surface_distances(pred_pts, gt_pts)
    if match.pred_to_gt.numel() == 0:
        return torch.tensor(float("inf"), dtype=torch.float64, device=match.gt_to_pred.device)
    return 0.5 * (_mean(match.pred_to_gt, 0.0) + _mean(match.gt_to_pred, 0.0))


def precision_recall_fscore(
    pred_pts: Points, gt_pts: Points, threshold: float = 0.1, match: SurfaceMatch | None = None
) -> dict[str, torch.Tensor]:
    """Scalars ``precision``, ``recall``, ``f_arithmetic = (P + R)/2`` and ``f_harmonic = 2PR/(P + R)``
    (0 when ``P + R = 0``) at ``threshold`` metres (a sample counts when strictly closer)."""
    match = match or surface_distances(pred_pts, gt_pts)
    precision = _mean((match.pred_to_gt < threshold).double(), 0.0)
    recall = _mean((match.gt_to_pred < threshold).double(), 0.0)
    total = precision + recall
    harmonic = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12), 0.0)
    return {"precision": precision, "recall": recall, "f_arithmetic": 0.5 * total, "f_harmonic": harmonic}


def normal_consistency(
    pred_pts: Points,
    pred_normals: Points,
    gt_pts: Points,
    gt_normals: Points,
    cutoff: float = 0.2,
    match: SurfaceMatch | None = None,
) -> torch.Tensor:
    """Normal consistency (scalar in [0, 1]): mean ``|n · n'|`` over both directions, with the nearest
    sample's normal ``n'``; a sample whose match is farther than ``cutoff`` metres contributes 0.
    Orientation-free, so inconsistently wound meshes are not penalised."""
    match = match or surface_distances(pred_pts, gt_pts)
    pred_n, gt_n = _as_tensor(pred_normals).double(), _as_tensor(gt_normals).double()
    if len(pred_n) == 0:
        return torch.tensor(0.0, dtype=torch.float64, device=gt_n.device)
    dev = pred_n.device
    pg = (pred_n * gt_n[match.pred_to_gt_idx.to(dev)]).sum(-1).abs() * (match.pred_to_gt.to(dev) <= cutoff)
    gp = (gt_n * pred_n[match.gt_to_pred_idx.to(dev)]).sum(-1).abs() * (match.gt_to_pred.to(dev) <= cutoff)
    return 0.5 * (_mean(pg, 0.0) + _mean(gp, 0.0))


# ------------------------------------------------------------------------------------------ torchmetrics
class _SceneMean(Metric):
    """Mean over scenes of per-scene values: one ``<name>_sum`` state per value and ``num_scenes``, all
    ``sum``-reduced, so DDP sync and :meth:`merge_state` are exact."""

    full_state_update = False
    higher_is_better: bool | None = None
    values: tuple[str, ...] = ()

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in self.values:
            self.add_state(f"{name}_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_scenes", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add_scene(self, scene: dict[str, torch.Tensor]) -> None:
        for name in self.values:
            state = getattr(self, f"{name}_sum")
            setattr(self, f"{name}_sum", state + scene[name].to(state))
        self.num_scenes += 1

    def _means(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"{name}_sum") / self.num_scenes for name in self.values}


class ChamferDistance(_SceneMean):
    """Mean over scenes of :func:`chamfer`. ``update(pred_pts [N, 3], gt_pts [M, 3])`` scores one scene."""

    higher_is_better = False
    values = ("chamfer",)

    def update(self, pred_pts: Points, gt_pts: Points, match: SurfaceMatch | None = None) -> None:
        self._add_scene({"chamfer": chamfer(pred_pts, gt_pts, match)})

    def compute(self) -> torch.Tensor:
        return self._means()["chamfer"]


class SurfaceFScore(_SceneMean):
    """Mean over scenes of :func:`precision_recall_fscore` at ``threshold`` metres; ``compute`` returns a
    dict with ``precision``, ``recall``, ``f_arithmetic`` and ``f_harmonic`` (each averaged per scene)."""

    higher_is_better = True
    values = ("precision", "recall", "f_arithmetic", "f_harmonic")

    def __init__(self, threshold: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)

    def update(self, pred_pts: Points, gt_pts: Points, match: SurfaceMatch | None = None) -> None:
        self._add_scene(precision_recall_fscore(pred_pts, gt_pts, self.threshold, match))

    def compute(self) -> dict[str, torch.Tensor]:
        return self._means()


class NormalConsistency(_SceneMean):
    """Mean over scenes of :func:`normal_consistency` with ``cutoff`` metres."""

    higher_is_better = True
    values = ("normal_consistency",)

    def __init__(self, cutoff: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cutoff = float(cutoff)

    def update(
        self,
        pred_pts: Points,
        pred_normals: Points,
        gt_pts: Points,
        gt_normals: Points,
        match: SurfaceMatch | None = None,
    ) -> None:
        nc = normal_consistency(pred_pts, pred_normals, gt_pts, gt_normals, self.cutoff, match)
        self._add_scene({"normal_consistency": nc})

    def compute(self) -> torch.Tensor:
        return self._means()["normal_consistency"]
