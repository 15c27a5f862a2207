"""The rasteriser interface shared by the CPU (Embree ray casting) and GPU (nvdiffrast) backends.

Both backends sample every pixel at its centre (``u = (c + 0.5)/W``, ``v = (r + 0.5)/H``, row 0 at the top),
take the closest surface between the ``near`` and ``far`` camera depths (the ``z`` of OpenCV camera
coordinates), rasterise both triangle orientations, and report barycentrics ``(b0, b1, b2)`` of the face's
vertices ``faces[f, 0..2]``. A backend is picked by constructing it (or by :func:`build_rasterizer` from a
config string), never from global state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_NEAR = 0.01
DEFAULT_FAR = 100.0


@dataclass
class RasterBuffers:
    """Per-pixel visibility of ``N`` views.

    ``face_id [N, H, W]`` int64 (-1 = background), ``bary [N, H, W, 3]`` float32 (0 on background),
    ``depth [N, H, W]`` float32 camera z (0 on background). All on one device.
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """``[N, H, W]`` bool: a surface was hit."""
        return self.face_id >= 0

    def to(self, device: torch.device | str) -> RasterBuffers:
        return RasterBuffers(self.face_id.to(device), self.bary.to(device), self.depth.to(device))


class Rasterizer(ABC):
    """Renders visibility buffers of a triangle mesh from OpenCV cameras with normalised intrinsics.

    Args:
        near, far: camera-depth range in the mesh's units; surfaces outside it are not seen (a surface
            nearer than ``near`` is clipped and what lies behind it shows).
    """

    name: str = "base"

    def __init__(self, near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR) -> None:
        if not 0.0 < near < far:
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        self.near = float(near)
        self.far = float(far)

    @abstractmethod
    def rasterize(
        self,
        vertices: np.ndarray | torch.Tensor,
        faces: np.ndarray | torch.Tensor,
        w2c: np.ndarray | torch.Tensor,
        K: np.ndarray | torch.Tensor,
        width: int,
        height: int,
    ) -> RasterBuffers:
        """Rasterise ``vertices [V, 3]``, ``faces [F, 3]`` from ``w2c [N, 4, 4]``, ``K [N, 3, 3]`` into
        ``height × width`` buffers."""


def as_numpy(x: np.ndarray | torch.Tensor, dtype: type | np.dtype) -> np.ndarray:
    """A numpy copy-or-view of an array or tensor, in ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def check_views(w2c: np.ndarray, K: np.ndarray) -> None:
    """Raise unless ``w2c [N, 4, 4]`` and ``K [N, 3, 3]`` describe the same ``N`` views."""
    if w2c.ndim != 3 or w2c.shape[1:] != (4, 4) or K.ndim != 3 or K.shape[1:] != (3, 3):
        raise ValueError(f"expected w2c [N,4,4] and K [N,3,3], got {w2c.shape} and {K.shape}")
    if len(w2c) != len(K):
        raise ValueError(f"{len(w2c)} extrinsics for {len(K)} intrinsics")


def build_rasterizer(backend: str, **kwargs) -> Rasterizer:
    """Construct a backend by name (``"embree"`` or ``"nvdiffrast"``), for configs that pass a string."""
    if backend == "embree":
        from genrecon.render.embree import EmbreeRasterizer

        return EmbreeRasterizer(**kwargs)
    if backend == "nvdiffrast":
        from genrecon.render.nvdiffrast import NvdiffrastRasterizer

        return NvdiffrastRasterizer(**kwargs)
    raise ValueError(f"unknown rasteriser backend {backend!r} (expected 'embree' or 'nvdiffrast')")
