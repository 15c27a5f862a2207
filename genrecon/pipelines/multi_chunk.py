"""Joint sampling of overlapping chunks on one global lattice (MultiDiffusion, as published).

All chunks of a scene sit at integer offsets of one voxel lattice (the tiling guarantees it). Noise is drawn
once per global voxel, so chunks that share a voxel start from the same value; after every Euler step the
chunks' states are averaged at every shared voxel (for the sparse stages "boundary-sensitive": a chunk's
outermost ``boundary_width`` rows on its x/y faces read the average but do not contribute to it). The model
is evaluated on bounded groups of chunks, so device memory does not grow with the number of chunks beyond
the latents themselves; conditioning tensors live on the host and move per group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from genrecon.pipelines.sampler import EulerSampler


def groups(n: int, size: int) -> Iterator[slice]:
    """Consecutive index ranges of at most ``size`` covering ``range(n)``."""
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + size))


@dataclass
class DenseLayout:
    """``n`` dense ``R³`` chunk windows at integer voxel ``offsets [n, 3]`` of one global canvas."""

    offsets: np.ndarray
    resolution: int

    @property
    def canvas_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.offsets.max(0) + self.resolution)

    def split(self, canvas: Tensor) -> Tensor:
        """``[C, X, Y, Z]`` -> per chunk ``[n, C, R, R, R]``."""
        r = self.resolution
        return torch.stack([canvas[:, x : x + r, y : y + r, z : z + r] for x, y, z in self.offsets])

    def average(self, chunks: Tensor) -> Tensor:
        """Per chunk ``[n, C, R, R, R]`` -> canvas ``[C, X, Y, Z]`` holding the mean over covering chunks."""
        r = self.resolution
        total = chunks.new_zeros((chunks.shape[1], *self.canvas_shape))
        count = chunks.new_zeros((1, *self.canvas_shape))
        for chunk, (x, y, z) in zip(chunks, self.offsets):
            total[:, x : x + r, y : y + r, z : z + r] += chunk
            count[:, x : x + r, y : y + r, z : z + r] += 1
        return total / count.clamp(min=1)

    def canvas_points(self) -> Tensor:
        """``[X·Y·Z, 3]`` voxel centres in the grid frame (the chunk at offset 0 spans ``[-0.5, 0.5]^3``)."""
        axes = [torch.arange(s, dtype=torch.float32) for s in self.canvas_shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        return (grid + 0.5) / self.resolution - 0.5


@dataclass
class SparseLayout:
    """Sparse chunk tokens on one lattice: ``global_coords [M, 3]`` (unique) and, per chunk, the rows of the
    global voxels it covers (``members[i]``) with their local coordinates ``local[i] [K_i, 3]``."""

    global_coords: np.ndarray
    members: list[np.ndarray]
    local: list[np.ndarray]
    resolution: int

    @staticmethod
    def from_global(global_coords: np.ndarray, offsets: np.ndarray, resolution: int) -> SparseLayout:
        members, local = [], []
        for off in offsets:
            rel = global_coords - off
            inside = np.all((rel >= 0) & (rel < resolution), axis=1)
            members.append(np.nonzero(inside)[0])
            local.append(rel[inside])
        return SparseLayout(global_coords, members, local, resolution)

    def boundary_weight(self, i: int, width: int) -> Tensor:
        """``[K_i]`` 0 for tokens in the outermost ``width`` rows of chunk i's x/y faces, else 1."""
        xy = self.local[i][:, :2]
        inner = np.all((xy >= width) & (xy < self.resolution - width), axis=1)
        return torch.from_numpy(inner.astype(np.float32))

    def average(self, feats: list[Tensor], boundary_width: int = 0) -> list[Tensor]:
        """Mean over chunks at every shared global voxel; see the module docstring for the boundary rule."""
        m, c = len(self.global_coords), feats[0].shape[1]
        total = feats[0].new_zeros((m, c))
        count = feats[0].new_zeros((m, 1))
        for i, f in enumerate(feats):
            w = self.boundary_weight(i, boundary_width).to(f) if boundary_width > 0 else torch.ones(len(f)).to(f)
            idx = torch.as_tensor(self.members[i], device=f.device)
            total.index_add_(0, idx, f * w[:, None])
            count.index_add_(0, idx, w[:, None])
        avg = total / count.clamp(min=1e-12)
        out = []
        for i, f in enumerate(feats):
            idx = torch.as_tensor(self.members[i], device=f.device)
            has = count[idx] > 0
            out.append(torch.where(has, avg[idx], f))
        return out


def sample_dense_joint(
    sampler: EulerSampler,
    model_fn: Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor],
    layout: DenseLayout,
    noise_canvas: Tensor,
    cond_2d: Tensor,
    cond_3d: Tensor | None,
    group_size: int,
    device: torch.device,
) -> Tensor:
    """Joint Euler sampling of dense chunks; returns per-chunk latents ``[n, C, R, R, R]`` (on ``device``).

    ``noise_canvas [C, X, Y, Z]``; ``cond_2d [n, T, C']`` and ``cond_3d [n, R³, C']`` may stay on the host.
    """
    x = layout.split(noise_canvas.to(device))
    for t, t_prev in tqdm(list(pairwise(sampler.timesteps())), desc="dense joint sampling", unit="step"):
        for g in groups(len(x), group_size):
            c2 = cond_2d[g].to(device)
            c3 = cond_3d[g].to(device) if cond_3d is not None else None
            v = sampler.velocity(model_fn, x[g], t, c2, c3)
            x[g] = x[g] - (t - t_prev) * v
        x = layout.split(layout.average(x))
    return x


def sample_sparse_joint(
    sampler: EulerSampler,
    model_fn: Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor], Tensor],
    layout: SparseLayout,
    noise_global: Tensor,
    cond_2d: Tensor,
    cond_3d_global: Tensor | None,
    group_size: int,
    device: torch.device,
    boundary_width: int = 1,
    extra: list[Tensor] | None = None,
) -> list[Tensor]:
    """Joint Euler sampling of sparse chunks; returns per-chunk feats ``[K_i, C]`` (on ``device``).

    ``model_fn(x [K, C], t [B], cond_2d [B, T, C'], cond_3d [K, C'] | None, coords [K, 4], extra [K, E] | None)
    -> [K, C]`` runs on a packed group of chunks. ``noise_global [M, C]`` and ``cond_3d_global [M, C']`` are per
    global voxel; ``extra[i] [K_i, E]`` is a per-chunk input (the texture flow's shape latent).
    """
    n = len(layout.members)
    x = [noise_global[torch.as_tensor(m)].to(device) for m in layout.members]
    for t, t_prev in tqdm(list(pairwise(sampler.timesteps())), desc="sparse joint sampling", unit="step"):
        for g in groups(n, group_size):
            ids = list(range(n))[g]
            coords = torch.cat([
                torch.cat([torch.full((len(layout.local[i]), 1), k, dtype=torch.int32),
                           torch.as_tensor(layout.local[i], dtype=torch.int32)], dim=1)
                for k, i in enumerate(ids)
            ]).to(device)
            xs = torch.cat([x[i] for i in ids])
            c3 = None
            if cond_3d_global is not None:
                c3 = torch.cat([cond_3d_global[torch.as_tensor(layout.members[i])] for i in ids]).to(device)
            batch_idx = coords[:, 0].long()
            ex = torch.cat([extra[i] for i in ids]).to(device) if extra is not None else None

            def fn(x_t: Tensor, t_vec: Tensor, c2: Tensor, c3_: Tensor | None) -> Tensor:
                return model_fn(x_t, t_vec, c2, c3_, coords, ex)

            v = sampler.velocity(fn, xs, t, cond_2d[g].to(device), c3, batch_idx)
            xs = xs - (t - t_prev) * v
            for i, part in zip(ids, xs.split([len(layout.local[i]) for i in ids])):
                x[i] = part
        x = layout.average(x, boundary_width)
    return x


def merge_sparse(layout: SparseLayout, feats: list[Tensor]) -> Tensor:
    """Per-chunk feats -> one ``[M, C]`` tensor on the global voxels (mean over covering chunks)."""
    m, c = len(layout.global_coords), feats[0].shape[1]
    total = feats[0].new_zeros((m, c))
    count = feats[0].new_zeros((m, 1))
    for i, f in enumerate(feats):
        idx = torch.as_tensor(layout.members[i], device=f.device)
        total.index_add_(0, idx, f)
        count.index_add_(0, idx, torch.ones_like(f[:, :1]))
    return total / count.clamp(min=1)
