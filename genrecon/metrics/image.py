"""Image metrics for rendered previews and texture evaluation: PSNR and SSIM from torchmetrics.

Images are ``[B, C, H, W]`` float in [0, 1] (``data_range = 1``). PSNR is computed per image and then averaged
(a batch-pooled MSE would let one bad view hide behind good ones); SSIM uses torchmetrics' defaults (11×11
Gaussian window, sigma 1.5).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB, ``[B]``, of ``pred`` against ``target`` (``[B, C, H, W]`` in [0, 1]).

    ``mask [B, 1, H, W]`` (bool) restricts each image to its foreground, e.g. the alpha of a render, so the
    shared background does not inflate the score.
    """
    if mask is None:
        return peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    mask = mask.expand_as(pred)
    return torch.stack(
        [peak_signal_noise_ratio(p[m], t[m], data_range=1.0) for p, t, m in zip(pred, target, mask)]
    )


def array_psnr(pred: np.ndarray, true: np.ndarray) -> float:
    """PSNR in dB of values in [0, 1] pooled over all elements (per-voxel or per-point colours of one chunk; an MSE
    floor of 1e-10 caps identical inputs at 100 dB)."""
    return -10.0 * math.log10(max(float(np.mean((np.asarray(pred) - np.asarray(true)) ** 2)), 1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (scalar) of ``pred`` against ``target`` (``[B, C, H, W]`` in [0, 1])."""
    return structural_similarity_index_measure(pred, target, data_range=1.0)


def image_metrics(prefix: str = "") -> MetricCollection:
    """Accumulating ``psnr`` (mean of per-image PSNR) and ``ssim`` for a validation or test loop."""
    return MetricCollection(
        {
            "psnr": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
        },
        prefix=prefix,
    )
