"""Morton (Z-order) codes of integer voxel coordinates, used to give sparse voxel sets a canonical order.

Each coordinate has 10 bits (so grids up to 1024^3); bit ``b`` of x, y, z lands at code bits ``3b+2``,
``3b+1``, ``3b``: x is the most significant bit of every triple, as TRELLIS.2's ``encode_seq`` (z-order mode)
does.
"""

from __future__ import annotations

import numpy as np

MORTON_BITS = 10
MORTON_MAX_COORD = (1 << MORTON_BITS) - 1


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Insert two zero bits between the 10 low bits of ``v`` (int64): bit b moves to bit 3b."""
    v = v & 0x3FF
    v = (v | (v << 16)) & 0x030000FF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    v = (v | (v << 2)) & 0x09249249
    return v


def _compact_bits(v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_spread_bits`: gather bits 0, 3, 6, ... into the 10 low bits."""
    v = v & 0x09249249
    v = (v | (v >> 2)) & 0x030C30C3
    v = (v | (v >> 4)) & 0x0300F00F
    v = (v | (v >> 8)) & 0x030000FF
    v = (v | (v >> 16)) & 0x3FF
    return v


def morton_encode(coords: np.ndarray) -> np.ndarray:
    """Z-order codes of ``coords [K, 3]`` integers in ``[0, 1024)`` -> ``[K]`` int64 (values below 2^30)."""
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"coords must be [K, 3], got shape {c.shape}")
    c = c.astype(np.int64)
    if c.size and (c.min() < 0 or c.max() > MORTON_MAX_COORD):
        raise ValueError(f"Morton coordinates must lie in [0, {MORTON_MAX_COORD}]")
    return (_spread_bits(c[:, 0]) << 2) | (_spread_bits(c[:, 1]) << 1) | _spread_bits(c[:, 2])


def morton_decode(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`morton_encode`: ``codes [K]`` -> ``coords [K, 3]`` int32."""
    k = np.asarray(codes, dtype=np.int64).reshape(-1)
    return np.stack([_compact_bits(k >> 2), _compact_bits(k >> 1), _compact_bits(k)], axis=1).astype(np.int32)


def morton_argsort(coords: np.ndarray) -> np.ndarray:
    """``[K]`` permutation that sorts ``coords [K, 3]`` by Morton code (stable for equal coordinates)."""
    return np.argsort(morton_encode(coords), kind="stable")
