"""Morton (Z-order) codes: bit layout, inverse, ordering."""

from __future__ import annotations

import numpy as np
import pytest

from genrecon.geometry.morton import morton_argsort, morton_decode, morton_encode


def _encode_bitwise(coords: np.ndarray) -> np.ndarray:
    """Slow reference: bit b of x, y, z goes to bits 3b+2, 3b+1, 3b."""
    codes = np.zeros(len(coords), dtype=np.int64)
    for b in range(10):
        for axis, shift in ((0, 2), (1, 1), (2, 0)):
            codes |= ((coords[:, axis].astype(np.int64) >> b) & 1) << (3 * b + shift)
    return codes


def test_known_codes_put_x_first_in_each_triple() -> None:
    coords = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [1023, 1023, 1023]])
    np.testing.assert_array_equal(morton_encode(coords), [4, 2, 1, 32, (1 << 30) - 1])


def test_encode_matches_bitwise_reference_and_decode_inverts() -> None:
    coords = np.random.default_rng(0).integers(0, 1024, size=(2000, 3))
    codes = morton_encode(coords)
    np.testing.assert_array_equal(codes, _encode_bitwise(coords))
    np.testing.assert_array_equal(morton_decode(codes), coords)
    assert morton_decode(codes).dtype == np.int32


def test_argsort_orders_by_code() -> None:
    coords = np.random.default_rng(1).integers(0, 64, size=(500, 3))
    codes = morton_encode(coords[morton_argsort(coords)])
    assert np.all(np.diff(codes) >= 0)


@pytest.mark.parametrize("bad", [[[-1, 0, 0]], [[0, 1024, 0]]])
def test_out_of_range_coordinates_raise(bad: list) -> None:
    with pytest.raises(ValueError, match="Morton"):
        morton_encode(np.array(bad))
