"""scripts/projection_overlay.py: voxel depth splats land where a pinhole camera puts them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tests.conftest import load_script


def test_voxel_depth_puts_a_point_on_its_pixel_and_ignores_points_behind():
    overlay = load_script("scripts/projection_overlay.py")
    w2c = torch.eye(4)
    w2c[2, 3] = 2.0  # camera 2 units behind the origin, looking along +z
    K = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    points = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, -3.0]])
    depth = overlay.voxel_depth(points, w2c, K, 8, 8)
    assert depth[4, 4] == 2.0
    assert depth[4, 6] == 2.0  # x = 0.5 at z = 2 → u = 0.75 → column 6
    assert int(torch.isfinite(depth).sum()) == 2  # the point behind the camera is not drawn


def test_overlay_of_tiny_chunks(tiny_dataset, tmp_path):
    out = load_script("scripts/projection_overlay.py").main(
        ["--shards", str(tiny_dataset / "shards"), "--chunks", "2", "--views", "2", "--out", str(tmp_path / "o.png")])
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.shape[2] == 3 and image.shape[1] > image.shape[0] / 4
    # Some pixels are covered by voxel splats (the middle panel is not all black).
    size = image.shape[0] // 2
    assert image[:size, size:2 * size].max() > 60


def test_view_coverage_statistics(tiny_dataset):
    stats = load_script("scripts/projection_overlay.py").main(
        ["--shards", str(tiny_dataset / "shards"), "--coverage", "--max-chunks", "2"])
    assert stats["chunks"] == 2 and stats["views"] >= 2
    assert 0 < stats["median_share"] <= 1
    assert 0 <= stats["views_below_5pct"] <= stats["views_below_20pct"] <= 1
