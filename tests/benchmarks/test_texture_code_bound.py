"""benchmarks/texture_code_bound.py: the block codes are exact where the colours allow it, and the script runs
on the tiny dataset with a full-rank code reproducing the colours."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import load_script


def _bound():
    return load_script("benchmarks/texture_code_bound.py")


def _cube(factor: int = 4) -> np.ndarray:
    """All cells of a 2×1×1 arrangement of f³ blocks, minus a few (blocks stay partly empty)."""
    idx = np.stack(np.meshgrid(np.arange(2 * factor), np.arange(factor), np.arange(factor), indexing="ij"), -1)
    return idx.reshape(-1, 3)[::3]


def test_block_and_sub_block_means_are_exact_on_piecewise_constant_colours():
    bound = _bound()
    coords = _cube()
    rng = np.random.default_rng(0)
    per_block = rng.random((2, 3))
    colour = per_block[coords[:, 0] // 4]
    grid, occupied, cell = bound.blocks(coords, colour, 4)
    assert grid.shape == (2, 64, 3) and occupied.sum() == len(coords)
    block, slot = cell.T
    np.testing.assert_allclose(grid[block, slot], colour)
    np.testing.assert_allclose(grid.mean(1)[block], colour)  # empty cells hold the block mean
    # Constant per 2³ sub-block: the sub-block means reproduce it, the block means do not.
    sub_colour = rng.random((4, 2, 2, 3))[coords[:, 0] // 2, coords[:, 1] // 2, coords[:, 2] // 2]
    grid, occupied, cell = bound.blocks(coords, sub_colour, 4)
    block, slot = cell.T
    np.testing.assert_allclose(bound.sub_block_mean(grid, occupied, 4)[block, slot], sub_colour)
    assert not np.allclose(grid.mean(1)[block], sub_colour)


def test_script_on_tiny_dataset(tiny_dataset, tmp_path):
    out = tmp_path / "bound.json"
    result = _bound().main(["--shards", str(tiny_dataset / "shards"), "--codes", "8", "192",
                            "--samples", "2000", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    cell, surface = result["per_cell_psnr_db"], result["surface_psnr_db_mean_over_chunks"]
    assert set(cell) == set(surface) == {"block_mean", "sub_mean", "pca_8", "pca_192"}
    # A full-rank code (f³·3 = 192 numbers) keeps every colour; coarser codes lose some.
    assert cell["pca_192"] > 60 and cell["pca_192"] > cell["sub_mean"] > cell["block_mean"] > 10
    assert result["val_chunks"] >= 1 and result["val_cells"] > 0
