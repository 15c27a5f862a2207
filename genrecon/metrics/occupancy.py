"""Occupancy-grid scores: voxel-exact IoU, IoU on a coarser grid, and an F-score with a tolerance.

IoU at 64³ counts a wall placed one voxel (4.4 cm at a 2.8 m chunk) off as entirely wrong. The F-score here counts
a predicted voxel as correct when a true one lies within ``tolerance`` voxels (Chebyshev distance), and a true
voxel as found when a predicted one does, as the surface F-score does with points.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def occupancy_iou(logits: Tensor, target: Tensor, threshold: float = 0.0) -> Tensor:
    """Per-sample IoU ``[B]`` of ``logits > threshold`` against the binary target (both empty: 0)."""
    pred = (logits > threshold).flatten(1)
    gt = target.flatten(1) > 0.5
    inter = (pred & gt).sum(1).float()
    union = (pred | gt).sum(1).float().clamp(min=1.0)
    return inter / union


def _dilate(occ: Tensor, tolerance: int) -> Tensor:
    """``[B, 1, R, R, R]`` bool grown by ``tolerance`` voxels in every direction (a cube structuring element)."""
    if tolerance <= 0:
        return occ
    k = 2 * tolerance + 1
    return F.max_pool3d(occ.float(), kernel_size=k, stride=1, padding=tolerance) > 0


def occupancy_fscore(logits: Tensor, target: Tensor, threshold: float = 0.0,
                     tolerance: int = 1) -> dict[str, Tensor]:
    """Per-sample precision, recall and F-score ``[B]`` of ``logits > threshold`` against ``target > 0.5``.

    Args:
        logits, target: ``[B, 1, R, R, R]`` (or ``[B, R, R, R]``).
        tolerance: voxels (Chebyshev); 0 gives voxel-exact precision and recall.
    Empty prediction: precision 0; empty target: recall 0; both empty: all 1.
    """
    pred = logits > threshold
    gt = target > 0.5
    if pred.dim() == 4:
        pred, gt = pred[:, None], gt[:, None]
    n_pred, n_gt = pred.flatten(1).sum(1).float(), gt.flatten(1).sum(1).float()
    tp_pred = (pred & _dilate(gt, tolerance)).flatten(1).sum(1).float()
    tp_gt = (gt & _dilate(pred, tolerance)).flatten(1).sum(1).float()
    both_empty = (n_pred == 0) & (n_gt == 0)
    precision = torch.where(both_empty, torch.ones_like(n_pred), tp_pred / n_pred.clamp(min=1.0))
    recall = torch.where(both_empty, torch.ones_like(n_gt), tp_gt / n_gt.clamp(min=1.0))
    fscore = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros_like(precision))
    return {"precision": precision, "recall": recall, "fscore": fscore}


def pooled_occupancy_iou(logits: Tensor, target: Tensor, threshold: float = 0.0, factor: int = 2) -> Tensor:
    """Per-sample IoU ``[B]`` after OR-pooling prediction and target by ``factor`` (kernel = stride).

    The pipeline max-pools the SS decoder's logits onto the shape latent grid before the shape flow (the
    published 512 pipeline: 64³ -> 32³; ``genrecon/pipelines/reconstruct.py``), so this is the IoU of the structure
    the next stage receives. Max-pooling then thresholding equals thresholding then OR-pooling (monotone).

    Args:
        logits, target: ``[B, 1, R, R, R]`` (or ``[B, R, R, R]``), ``R`` divisible by ``factor``.
    Both empty: IoU 0 (as :func:`occupancy_iou`).
    """
    if logits.dim() == 4:
        logits, target = logits[:, None], target[:, None]
    if any(s % factor for s in logits.shape[2:]):
        raise ValueError(f"grid {tuple(logits.shape[2:])} is not divisible by the pooling factor {factor}")
    if factor > 1:
        logits, target = F.max_pool3d(logits.float(), factor), F.max_pool3d(target.float(), factor)
    return occupancy_iou(logits, target, threshold)


def top_fraction_mask(logits: Tensor, fraction: float | Tensor) -> Tensor:
    """``logits > threshold`` with the threshold chosen per sample so that exactly ``round(fraction · N)`` of its
    ``N`` voxels are occupied: the ``k`` largest logits (ties broken arbitrarily). A calibration probe for
    predictions whose logits are too low or saturated for any single threshold to give the right amount.

    Args:
        logits: ``[B, ...]``.
        fraction: in [0, 1], one for all samples or ``[B]``.
    Returns: bool, the shape of ``logits``.
    """
    flat = logits.flatten(1)
    b, n = flat.shape
    frac = torch.as_tensor(fraction, dtype=torch.float64).expand(b)
    if ((frac < 0) | (frac > 1)).any():
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    ks = (frac * n).round().long().tolist()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    for i, k in enumerate(ks):
        if k > 0:
            mask[i, flat[i].topk(k).indices] = True
    return mask.view_as(logits)


SURFACE_CLASSES = ("floor", "horizontal", "vertical")


def surface_classes(occ: Tensor, floor_layers: int = 2) -> dict[str, Tensor]:
    """The occupied voxels of ``occ [..., R, R, R]`` (bool; the chunk frame's z, up, is the last axis) split by
    the surface they lie on: ``floor`` (the lowest ``floor_layers`` layers, where training chunks stand on the
    floor), ``horizontal`` (no occupied voxel directly above or below: a one-voxel-thick horizontal surface such
    as a table top or a ceiling) and ``vertical`` (the rest: walls and the sides of furniture). Each ``[..., R, R,
    R]`` bool; together they partition ``occ``. Which kinds of surface a cue or a sample finds."""
    occ = occ.bool()
    stacked = torch.zeros_like(occ)
    stacked[..., 1:] |= occ[..., :-1]
    stacked[..., :-1] |= occ[..., 1:]
    floor = torch.zeros_like(occ)
    floor[..., :floor_layers] = True
    return {"floor": occ & floor, "horizontal": occ & ~floor & ~stacked, "vertical": occ & ~floor & stacked}
