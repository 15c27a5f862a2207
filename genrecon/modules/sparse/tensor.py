"""Batched sparse voxel tensor: integer coordinates plus one feature row per active voxel.

``coords`` is ``[K, 4]`` int32 ``(batch, x, y, z)`` sorted by batch index (within a sample the order is free);
``feats`` is ``[K, C]`` (or ``[K, ...]``). Lookup structures (sorted coordinate keys, neighbour maps, the
space-to-channel plan) live in a per-coordinate-set cache that tensors made by :meth:`SparseTensor.replace`
share, so every conv at one level of a network builds its neighbour map once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class NeighbourMap:
    """Submanifold neighbour relation of one coordinate set, as a table and as per-offset pair lists.

    ``table[i, o]`` is the row of the voxel at ``coords[i] + offset(o)``, or ``K`` (a zero pad row) if absent.
    Offsets enumerate ``(dx, dy, dz)`` in C order (x slowest), so ``o = 9·(dx+1) + 3·(dy+1) + (dz+1)`` for a
    3×3×3 kernel, matching weights stored ``[C_out, kx, ky, kz, C_in]``. The relation is symmetric: offset
    ``o`` of ``i`` is ``j`` exactly when offset ``V-1-o`` of ``j`` is ``i``.

    ``pair_out``/``pair_in`` list the existing (output row, input row) pairs grouped by offset, the centre
    offset excluded (it is the identity); ``counts[o]`` is the number of pairs of offset ``o``.
    """

    table: Tensor  # [K, V] int64
    pair_out: Tensor  # [P] int64
    pair_in: Tensor  # [P] int64
    counts: list[int]  # V entries, 0 for the centre

    @property
    def num_voxels(self) -> int:
        return self.table.shape[0]

    @property
    def volume(self) -> int:
        return self.table.shape[1]


def _spatial_offsets(kernel_size: int, device: torch.device) -> Tensor:
    """``[V, 3]`` int64 offsets of an odd cubic kernel, x slowest."""
    r = torch.arange(-(kernel_size // 2), kernel_size // 2 + 1, device=device)
    gx, gy, gz = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1), gz.reshape(-1)], dim=1)


class SparseTensor:
    """Sparse voxel features of a batch.

    Args:
        coords: ``[K, 4]`` integer ``(batch, x, y, z)``, sorted by batch, non-negative, unique.
        feats: ``[K, ...]`` features.
        batch_size: number of samples (default ``max(batch) + 1``); pass it when trailing samples are empty.
    """

    def __init__(self, coords: Tensor, feats: Tensor, batch_size: int | None = None) -> None:
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be [K, 4], got {tuple(coords.shape)}")
        if coords.dtype.is_floating_point or coords.dtype == torch.bool:
            raise TypeError(f"coords must be integer, got {coords.dtype}")
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats has {feats.shape[0]} rows but coords has {coords.shape[0]}")
        if feats.device != coords.device:
            raise ValueError(f"coords on {coords.device} but feats on {feats.device}")
        coords = coords.to(torch.int32)
        if coords.shape[0] > 0:
            if bool((coords[1:, 0] < coords[:-1, 0]).any()):
                raise ValueError("coords must be sorted by batch index (column 0)")
            if bool((coords < 0).any()):
                raise ValueError("coords must be non-negative")
        if batch_size is None:
            batch_size = int(coords[:, 0].max()) + 1 if coords.shape[0] > 0 else 0
        elif coords.shape[0] > 0 and int(coords[-1, 0]) >= batch_size:
            raise ValueError(f"batch index {int(coords[-1, 0])} >= batch_size {batch_size}")
        self._init(coords, feats, batch_size, {})

    def _init(self, coords: Tensor, feats: Tensor, batch_size: int, cache: dict[Any, Any]) -> None:
        self.coords = coords
        self.feats = feats
        self.batch_size = batch_size
        self._cache = cache

    @classmethod
    def _trusted(cls, coords: Tensor, feats: Tensor, batch_size: int) -> SparseTensor:
        """Construct without validation (and without device syncs) from coords known to be valid."""
        out = cls.__new__(cls)
        out._init(coords, feats, batch_size, {})
        return out

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return self.coords.shape[0]

    def __repr__(self) -> str:
        return (
            f"SparseTensor(K={len(self)}, feats={tuple(self.feats.shape)}, dtype={self.feats.dtype}, "
            f"batch_size={self.batch_size}, device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def layout(self) -> list[slice]:
        """Per-sample row ranges: sample ``b`` occupies ``rows[layout[b]]``."""

        def build() -> list[slice]:
            counts = torch.bincount(self.coords[:, 0].long(), minlength=self.batch_size).tolist()
            starts = [0]
            for c in counts:
                starts.append(starts[-1] + c)
            return [slice(starts[b], starts[b + 1]) for b in range(self.batch_size)]

        return self.cached("layout", build)

    # ------------------------------------------------------------------ cache
    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """Return the cached value for ``key`` of this coordinate set, building it on first use."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def get_cached(self, key: Any) -> Any | None:
        return self._cache.get(key)

    def set_cached(self, key: Any, value: Any) -> None:
        self._cache[key] = value

    # ------------------------------------------------------------------ construction helpers
    def replace(self, feats: Tensor) -> SparseTensor:
        """Same coordinates (and shared cache) with new ``[K, ...]`` features."""
        if feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"replace: feats has {feats.shape[0]} rows, expected {self.coords.shape[0]}")
        out = SparseTensor.__new__(SparseTensor)
        out._init(self.coords, feats, self.batch_size, self._cache)
        return out

    @classmethod
    def from_list(
        cls, samples: Sequence[tuple[Tensor, Tensor]], device: torch.device | str | None = None
    ) -> SparseTensor:
        """Batch ``[(coords [K_i, 3], feats [K_i, C]), ...]``; sample ``i`` gets batch index ``i``."""
        if len(samples) == 0:
            raise ValueError("from_list needs at least one sample")
        coords, feats = [], []
        for i, (c, f) in enumerate(samples):
            if c.ndim != 2 or c.shape[1] != 3:
                raise ValueError(f"sample {i}: coords must be [K, 3], got {tuple(c.shape)}")
            c = c.to(device=device if device is not None else c.device, dtype=torch.int32)
            b = torch.full((c.shape[0], 1), i, dtype=torch.int32, device=c.device)
            coords.append(torch.cat([b, c], dim=1))
            feats.append(f.to(c.device))
        return cls(torch.cat(coords), torch.cat(feats), batch_size=len(samples))

    def to_list(self) -> list[tuple[Tensor, Tensor]]:
        """Inverse of :meth:`from_list`: ``[(coords [K_i, 3], feats [K_i, ...]), ...]``."""
        return [(self.coords[s, 1:], self.feats[s]) for s in self.layout]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SparseTensor:
        """Move to ``device`` and/or cast the features to ``dtype`` (coords stay int32). A dtype-only cast
        keeps the cache; a device move starts with an empty one (lookup structures are rebuilt there)."""
        coords = self.coords.to(device) if device is not None else self.coords
        feats = self.feats.to(device=device, dtype=dtype)
        if coords is self.coords:
            return self.replace(feats)
        return SparseTensor._trusted(coords, feats, self.batch_size)

    def dense(self, resolution: int) -> Tensor:
        """Scatter into a dense grid ``[B, C, R, R, R]`` (zeros where inactive)."""
        c = self.coords.long()
        if len(self) > 0 and int(c[:, 1:].max()) >= resolution:
            raise ValueError(f"coordinate {int(c[:, 1:].max())} does not fit resolution {resolution}")
        flat_feats = self.feats.reshape(len(self), -1)
        out = flat_feats.new_zeros(self.batch_size, resolution, resolution, resolution, flat_feats.shape[1])
        out[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = flat_feats
        return out.permute(0, 4, 1, 2, 3).contiguous()

    @classmethod
    def from_dense(cls, dense: Tensor, mask: Tensor | None = None) -> SparseTensor:
        """Gather the active voxels of ``dense [B, C, R, R, R]``; ``mask [B, R, R, R]`` bool defaults to
        voxels with any non-zero channel. Rows come out sorted by ``(batch, x, y, z)``."""
        if dense.ndim != 5:
            raise ValueError(f"dense must be [B, C, X, Y, Z], got {tuple(dense.shape)}")
        if mask is None:
            mask = (dense != 0).any(dim=1)
        idx = mask.nonzero()
        feats = dense.permute(0, 2, 3, 4, 1)[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]]
        return cls._trusted(idx.to(torch.int32), feats, dense.shape[0])

    # ------------------------------------------------------------------ coordinate lookup
    def _key_index(self, margin: int) -> tuple[Tensor, Tensor, int]:
        """Sorted int64 keys of the coordinates, the permutation that sorts them, and the per-axis extent
        ``S`` of the encoding; each spatial coordinate is shifted by ``margin`` so that every neighbour within
        ``margin`` still encodes to a unique non-wrapping key."""

        def build() -> tuple[Tensor, Tensor, int]:
            extent = (int(self.coords[:, 1:].max()) + 1 if len(self) > 0 else 1) + 2 * margin
            keys = _encode(self.coords.long(), extent, margin)
            sorted_keys, perm = torch.sort(keys)
            return sorted_keys, perm, extent

        return self.cached(("keys", margin), build)

    def lookup(self, coords: Tensor) -> Tensor:
        """Row of each query ``coords [M, 4]`` in this tensor, or ``-1`` where it is not active: ``[M]``
        int64."""
        sorted_keys, perm, extent = self._key_index(0)
        q = coords.to(self.coords.device).long()
        inside = ((q[:, 1:] >= 0) & (q[:, 1:] < extent)).all(dim=1) & (q[:, 0] >= 0)
        out = torch.full((q.shape[0],), -1, dtype=torch.long, device=q.device)
        if len(self) == 0:
            return out
        keys = _encode(q.clamp(min=0), extent, 0)
        pos = torch.searchsorted(sorted_keys, keys).clamp_(max=len(self) - 1)
        hit = inside & (sorted_keys[pos] == keys)
        return torch.where(hit, perm[pos], out)

    def neighbour_map(self, kernel_size: int = 3) -> NeighbourMap:
        """Cached submanifold neighbour table for an odd cubic ``kernel_size`` (see :class:`NeighbourMap`)."""
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")

        def build() -> NeighbourMap:
            margin = kernel_size // 2
            sorted_keys, perm, extent = self._key_index(margin)
            k = len(self)
            offsets = _spatial_offsets(kernel_size, self.coords.device)
            # Offsets shift the key linearly because every neighbour stays inside the padded extent.
            deltas = (offsets[:, 0] * extent + offsets[:, 1]) * extent + offsets[:, 2]
            keys = _encode(self.coords.long(), extent, margin)
            query = keys[:, None] + deltas[None, :]  # [K, V]
            if k == 0:
                empty = query.new_zeros(0)
                return NeighbourMap(query, empty, empty, [0] * query.shape[1])
            pos = torch.searchsorted(sorted_keys, query.reshape(-1)).clamp_(max=k - 1).view(k, -1)
            hit = sorted_keys[pos] == query
            table = torch.where(hit, perm[pos], torch.full_like(pos, k))
            hit[:, offsets.shape[0] // 2] = False  # the centre is the identity; convs handle it densely
            # One nonzero over [V, K] groups the pairs by offset with a single device sync for the counts.
            offset_idx, pair_out = hit.t().nonzero(as_tuple=True)
            counts = torch.bincount(offset_idx, minlength=offsets.shape[0]).tolist()
            return NeighbourMap(table, pair_out, table[pair_out, offset_idx], counts)

        return self.cached(("neighbours", kernel_size), build)


def _encode(coords: Tensor, extent: int, margin: int) -> Tensor:
    """``[M, 4]`` int64 ``(b, x, y, z)`` → ``[M]`` int64 keys ordered by ``(b, x, y, z)``."""
    x, y, z = (coords[:, i] + margin for i in (1, 2, 3))
    return ((coords[:, 0] * extent + x) * extent + y) * extent + z


def feats_at(src: SparseTensor, like: SparseTensor) -> Tensor:
    """``src.feats`` reordered to the coordinates of ``like`` (same set, any order): ``[K_like, ...]``.

    Raises if a coordinate of ``like`` is missing from ``src``.
    """
    if src.coords is like.coords:
        return src.feats
    idx = src.lookup(like.coords)
    if bool((idx < 0).any()):
        raise ValueError(
            f"{int((idx < 0).sum())} of {len(like)} voxels are missing from the source tensor; "
            "the two tensors do not share a coordinate set"
        )
    return src.feats[idx]
