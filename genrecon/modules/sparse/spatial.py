"""×2 space-to-channel and channel-to-space resampling of sparse voxels.

Child numbering inside a parent voxel is ``k = (x%2) + 2·(y%2) + 4·(z%2)`` (x is the lowest bit). Packed
features use channel ``k·C + c`` for channel ``c`` of child ``k``, so ``feats.view(N, 8, C)[:, k]`` is child
``k`` and ``feats.view(N·8, C)[8p + k]`` is child ``k`` of parent ``p``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genrecon.modules.sparse.tensor import SparseTensor

_CHILD_MASK = "child_mask"


def _s2c_plan(x: SparseTensor) -> tuple[SparseTensor, Tensor]:
    """Coarse coordinate set (as a tensor whose feats are the ``[N, 8]`` bool child mask) and the packed
    row ``8·parent + k`` of every fine voxel ``[K]``; cached on the fine coordinate set."""

    def build() -> tuple[SparseTensor, Tensor]:
        c = x.coords.long()
        parent = torch.cat([c[:, :1], c[:, 1:] // 2], dim=1)
        k = (c[:, 1] % 2) + 2 * (c[:, 2] % 2) + 4 * (c[:, 3] % 2)
        extent = int(parent[:, 1:].max()) + 1 if len(x) > 0 else 1
        keys = ((parent[:, 0] * extent + parent[:, 1]) * extent + parent[:, 2]) * extent + parent[:, 3]
        # Sorted unique keys give coarse voxels ordered by (batch, x, y, z), hence sorted by batch.
        uniq, inverse = torch.unique(keys, return_inverse=True)
        coarse_coords = torch.stack(
            [uniq // extent**3, (uniq // extent**2) % extent, (uniq // extent) % extent, uniq % extent], dim=1
        ).to(torch.int32)
        rows = inverse * 8 + k
        mask = torch.zeros(uniq.shape[0] * 8, dtype=torch.bool, device=c.device)
        mask[rows] = True
        mask = mask.view(-1, 8)
        template = SparseTensor._trusted(coarse_coords, mask, x.batch_size)
        template.set_cached(_CHILD_MASK, mask)
        return template, rows

    return x.cached("space_to_channel", build)


def child_mask(coarse: SparseTensor) -> Tensor:
    """The ``[N, 8]`` bool child-existence mask cached by :class:`SpatialToChannel` on its output."""
    mask = coarse.get_cached(_CHILD_MASK)
    if mask is None:
        raise KeyError("this tensor was not produced by SpatialToChannel, so it has no cached child mask")
    return mask


class SpatialToChannel(nn.Module):
    """×2 downsample: ``[K, C]`` fine voxels → ``[N, 8·C]`` parents, zeros for missing children.

    Output coordinates are the unique parents sorted by ``(batch, x, y, z)``; the output caches the
    ``[N, 8]`` child mask (read it with :func:`child_mask`). Repeated calls on one coordinate set share the
    plan and the output coordinate set (hence its neighbour maps).
    """

    def forward(self, x: SparseTensor) -> SparseTensor:
        template, rows = _s2c_plan(x)
        n, c = len(template), x.feats.shape[1]
        packed = x.feats.new_zeros(n * 8, c).index_copy(0, rows, x.feats)
        return template.replace(packed.view(n, 8 * c))


class ChannelToSpatial(nn.Module):
    """×2 upsample: ``[N, 8·C]`` parents → ``[M, C]`` children kept by ``mask [N, 8]`` (bool).

    Children are emitted in parent order, then by increasing ``k``; child ``k`` of parent ``p`` sits at
    ``2·p + (k&1, (k>>1)&1, (k>>2)&1)`` and takes packed row ``8p + k``.
    """

    def forward(self, x: SparseTensor, mask: Tensor) -> SparseTensor:
        n = len(x)
        if mask.shape != (n, 8) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be [{n}, 8] bool, got {tuple(mask.shape)} {mask.dtype}")
        if x.feats.shape[1] % 8:
            raise ValueError(f"channels ({x.feats.shape[1]}) must be a multiple of 8")
        parent, k = mask.nonzero(as_tuple=True)
        bits = torch.stack([k & 1, (k >> 1) & 1, (k >> 2) & 1], dim=1)
        pc = x.coords[parent]
        coords = torch.cat([pc[:, :1], pc[:, 1:] * 2 + bits.to(torch.int32)], dim=1)
        feats = x.feats.reshape(n * 8, -1)[parent * 8 + k]
        return SparseTensor._trusted(coords, feats, x.batch_size)
