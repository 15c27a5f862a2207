"""Label-preserving augmentation: batched sparse voxel grids for the autoencoders, and whole chunk batches
(occupancy, latent, views and cameras) for the sparse-structure flow.

A texture autoencoder's job does not change when its input chunk is turned about the vertical axis, mirrored,
or painted in swapped colour channels, so these make new training chunks out of the few hundred a synthetic
dataset has. Measured need (session 3, small preset, 216 training chunks): the texture VAE's training L1 kept
falling (0.064 → 0.036) while held-out L1 stalled at 0.057, i.e. it overfits the training materials.

Only turns about ``z`` and mirrors of ``x``/``y`` are used: chunks are z-up, and a floor never becomes a wall.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from genrecon.geometry.chunk_symmetry import transform_cameras, transform_grid, transform_views


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator of a training step's augmentation draws: it depends only on the seed, the step and the
    rank, so a resumed run draws what an uninterrupted one did."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)


@dataclass(frozen=True)
class VoxelAugmentation:
    """Which transforms :func:`augment_voxels` draws per sample.

    Args:
        rotate: a random multiple of 90° about ``z``.
        flip: mirror ``x`` with probability 1/2 (with ``rotate`` this gives all 8 symmetries of the square).
        permute_rgb: a random permutation of the three base-colour channels (``feats[:, 0:3]``).
    """

    rotate: bool = True
    flip: bool = True
    permute_rgb: bool = True


def augment_voxels(
    coords: Tensor,
    feats: Tensor,
    resolution: int,
    generator: torch.Generator,
    config: VoxelAugmentation = VoxelAugmentation(),
) -> tuple[Tensor, Tensor]:
    """Transform each sample of a batched sparse grid with its own random draw.

    Args:
        coords: ``[K, 4]`` integer ``(batch, x, y, z)`` in ``[0, resolution)``; rows keep their order.
        feats: ``[K, C]``; with ``permute_rgb`` channels 0–2 are the base colour.
        resolution: the grid size ``R`` (mirroring maps ``x`` to ``R - 1 - x``).
        generator: a CPU generator; the draws do not depend on the tensors' device.

    Returns ``(coords, feats)``, new tensors of the same shapes, dtypes and device. Unique coordinates stay
    unique (every transform is a bijection of the grid).
    """
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must be [K, 4] (batch, x, y, z), got {tuple(coords.shape)}")
    if len(coords) == 0:
        return coords.clone(), feats.clone()
    batch = coords[:, 0].long()
    n = int(batch.max()) + 1
    turns = torch.randint(0, 4, (n,), generator=generator) if config.rotate else torch.zeros(n, dtype=torch.long)
    mirror = torch.randint(0, 2, (n,), generator=generator) if config.flip else torch.zeros(n, dtype=torch.long)
    perms = (torch.stack([torch.randperm(3, generator=generator) for _ in range(n)]) if config.permute_rgb
             else torch.arange(3).expand(n, 3))

    device = coords.device
    k = turns.to(device)[batch]
    x, y = coords[:, 1], coords[:, 2]
    top = resolution - 1
    # The four turns about z of (x, y) on an R-grid: (x, y), (R-1-y, x), (R-1-x, R-1-y), (y, R-1-x).
    new_x = torch.where(k == 0, x, torch.where(k == 1, top - y, torch.where(k == 2, top - x, y)))
    new_y = torch.where(k == 0, y, torch.where(k == 1, x, torch.where(k == 2, top - y, top - x)))
    new_x = torch.where(mirror.to(device)[batch].bool(), top - new_x, new_x)
    out_coords = torch.stack([coords[:, 0], new_x, new_y, coords[:, 3]], dim=1).to(coords.dtype)

    out_feats = feats.clone()
    if config.permute_rgb:
        cols = perms.to(device)[batch]  # [K, 3]
        out_feats[:, :3] = torch.gather(feats[:, :3], 1, cols)
    return out_coords, out_feats


def augment_chunk_batch(batch: dict[str, Any], turns: Sequence[int], mirror: Sequence[bool],
                        encode: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
    """The batch with chunk ``i`` turned ``turns[i]`` times by 90° about z, then mirrored in x if ``mirror[i]``
    (:mod:`genrecon.geometry.chunk_symmetry`): its ``occupancy [B, 1, R, R, R]``, ``views [B, N, 3, S, S]``,
    ``w2c`` and ``intrinsics`` (where present) change together, so every view still shows the chunk where its
    camera says. A latent is not a grid that can be turned (the encoder is not equivariant), so ``ss_latent``
    of each changed chunk is encoded again from its new occupancy by ``encode`` (``[M, 1, R, R, R]`` →
    ``[M, C, r, r, r]``). Unchanged chunks keep every tensor as it was. Returns a new dict.
    """
    n = len(turns)
    if len(mirror) != n:
        raise ValueError(f"turns ({n}) and mirror ({len(mirror)}) must give one element per chunk")
    changed = [i for i in range(n) if turns[i] % 4 or mirror[i]]
    out = dict(batch)
    if not changed:
        return out
    if "ss_latent" in batch and (encode is None or "occupancy" not in batch):
        raise ValueError("turning a batch with ss_latent needs its occupancy and the SS-VAE encoder to re-encode "
                         "the latent")
    for key in ("occupancy", "views", "w2c", "intrinsics"):
        if key in batch:
            out[key] = batch[key].clone()
    for i in changed:
        t, m = int(turns[i]), bool(mirror[i])
        if "occupancy" in batch:
            out["occupancy"][i] = transform_grid(batch["occupancy"][i], t, m)
        if "views" in batch:
            out["views"][i] = transform_views(batch["views"][i], m)
        if "w2c" in batch:
            out["w2c"][i], out["intrinsics"][i] = transform_cameras(batch["w2c"][i], batch["intrinsics"][i], t, m)
    if "ss_latent" in batch:
        idx = torch.tensor(changed, device=batch["ss_latent"].device)
        latent = batch["ss_latent"].clone()
        latent[idx] = encode(out["occupancy"][idx]).to(latent.dtype)
        out["ss_latent"] = latent
    return out
