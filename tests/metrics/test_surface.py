"""Surface metrics on meshes with known answers: parallel planes, shifted boxes, identical and flipped meshes,
and the scene-mean reduction that DDP performs. The thin image-metric wrappers are checked at the end."""

import numpy as np
import pytest
import torch
import trimesh

from genrecon.metrics.image import image_metrics, psnr, ssim
from genrecon.metrics.surface import (
    ChamferDistance,
    NormalConsistency,
    SurfaceFScore,
    chamfer,
    normal_consistency,
    precision_recall_fscore,
    sample_mesh,
    surface_distances,
)

N = 200_000  # the protocol's sample count: the sampling tolerances below are for it


def square(z: float, size: float = 1.0, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[0, 0, z], [size, 0, z], [size, size, z], [0, size, z]], dtype=float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    return v, f[:, ::-1] if flip else f


def box(extents, shift=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    m = trimesh.creation.box(extents=extents)
    return m.vertices + np.asarray(extents) / 2 + np.asarray(shift), m.faces


def shifted_box_chamfer(lx: float, ly: float, lz: float, s: float) -> float:
    """Exact Chamfer distance between a box [0,lx]x[0,ly]x[0,lz] and its copy shifted by s < min(l) along x.

    Per direction (symmetric): the exposed x-face is s away (area ly·lz); the buried x-face is min(s, distance
    to its rim) away, integral ly·lz·s - s²(ly+lz) + 4s³/3; the strips x < s of the side faces are s - x away,
    integral s²(ly+lz). The s² terms cancel.
    """
    area = 2 * (lx * ly + lx * lz + ly * lz)
    return (2 * ly * lz * s + 4 * s**3 / 3) / area


@pytest.mark.parametrize("d", [0.05, 0.15])
def test_parallel_planes_at_known_distance(d):
    gt_pts, gt_n = sample_mesh(*square(0.0), n=N, seed=0)
    pred_pts, pred_n = sample_mesh(*square(d), n=N, seed=1)
    match = surface_distances(pred_pts, gt_pts)
    assert float(chamfer(pred_pts, gt_pts, match)) == pytest.approx(d, abs=1e-3)
    prf = precision_recall_fscore(pred_pts, gt_pts, threshold=0.1, match=match)
    expected = 1.0 if d < 0.1 else 0.0
    for key in ("precision", "recall", "f_arithmetic", "f_harmonic"):
        assert float(prf[key]) == expected
    nc = normal_consistency(pred_pts, pred_n, gt_pts, gt_n, cutoff=0.2, match=match)
    assert float(nc) == pytest.approx(1.0)


def test_box_shifted_along_x_matches_the_analytic_chamfer():
    extents, s = (1.0, 0.8, 0.6), 0.1
    gt_pts, _ = sample_mesh(*box(extents), n=N, seed=0)
    pred_pts, _ = sample_mesh(*box(extents, (s, 0, 0)), n=N, seed=1)
    expected = shifted_box_chamfer(*extents, s)
    # Sample-to-sample matching adds about half the sample spacing (~2 mm here) where the surfaces coincide.
    assert float(chamfer(pred_pts, gt_pts)) == pytest.approx(expected, abs=2.5e-3)


def test_identical_meshes_score_perfectly():
    mesh = box((0.25, 0.25, 0.25))
    pts_a, n_a = sample_mesh(*mesh, n=N, seed=0)
    pts_b, n_b = sample_mesh(*mesh, n=N, seed=1)
    assert float(chamfer(pts_a, pts_a)) == 0.0
    assert float(chamfer(pts_a, pts_b)) <= 1e-3  # independent samples of the same surface
    prf = precision_recall_fscore(pts_a, pts_b)
    assert float(prf["f_arithmetic"]) == 1.0 and float(prf["f_harmonic"]) == 1.0
    assert float(normal_consistency(pts_a, n_a, pts_a, n_a)) == 1.0
    # independent samples: only those next to an edge may match a sample on the neighbouring face
    assert float(normal_consistency(pts_a, n_a, pts_b, n_b)) == pytest.approx(1.0, abs=1e-2)


def test_normal_consistency_ignores_orientation_and_respects_the_cutoff():
    pts, n = sample_mesh(*square(0.0), n=20_000, seed=0)
    flipped_pts, flipped_n = sample_mesh(*square(0.0, flip=True), n=20_000, seed=1)
    assert np.allclose(flipped_n, -n[:1])
    assert float(normal_consistency(flipped_pts, flipped_n, pts, n, cutoff=0.2)) == pytest.approx(1.0)
    far_pts, far_n = sample_mesh(*square(0.3), n=20_000, seed=1)
    assert float(normal_consistency(far_pts, far_n, pts, n, cutoff=0.2)) == 0.0
    # perpendicular surfaces within the cutoff score 0 too
    wall = np.array([[0, 0.5, 0], [1, 0.5, 0], [1, 0.5, 0.01], [0, 0.5, 0.01]])
    wall_pts, wall_n = sample_mesh(wall, np.array([[0, 1, 2], [0, 2, 3]]), n=20_000, seed=2)
    assert float(normal_consistency(wall_pts, wall_n, pts, n, cutoff=0.2)) == pytest.approx(0.0, abs=1e-9)


def test_partial_overlap_precision_and_recall():
    """Prediction covers [0, 1]², GT [0, 2] x [0, 1] in the same plane: precision 1, recall ~0.5."""
    gt = (np.array([[0, 0, 0], [2, 0, 0], [2, 1, 0], [0, 1, 0]], float), np.array([[0, 1, 2], [0, 2, 3]]))
    gt_pts, _ = sample_mesh(*gt, n=50_000, seed=0)
    pred_pts, _ = sample_mesh(*square(0.0), n=50_000, seed=1)
    prf = precision_recall_fscore(pred_pts, gt_pts, threshold=0.1)
    assert float(prf["precision"]) == 1.0
    assert float(prf["recall"]) == pytest.approx(0.55, abs=0.01)  # x < 1.1 is within 10 cm
    p, r = float(prf["precision"]), float(prf["recall"])
    assert float(prf["f_arithmetic"]) == pytest.approx((p + r) / 2)
    assert float(prf["f_harmonic"]) == pytest.approx(2 * p * r / (p + r))


def test_empty_prediction_scores_worst():
    gt_pts, gt_n = sample_mesh(*square(0.0), n=1000, seed=0)
    empty = np.zeros((0, 3))
    assert float(chamfer(empty, gt_pts)) == float("inf")
    prf = precision_recall_fscore(empty, gt_pts)
    assert all(float(v) == 0.0 for v in prf.values())
    assert float(normal_consistency(empty, empty, gt_pts, gt_n)) == 0.0


def _scenes():
    """Three small scenes: (pred points, pred normals, gt points, gt normals)."""
    out = []
    for k, d in enumerate((0.02, 0.08, 0.25)):
        gt_pts, gt_n = sample_mesh(*square(0.0), n=5000, seed=k)
        pred_pts, pred_n = sample_mesh(*square(d), n=4000, seed=10 + k)
        out.append(tuple(torch.as_tensor(a) for a in (pred_pts, pred_n, gt_pts, gt_n)))
    return out


def _metrics():
    return ChamferDistance(), SurfaceFScore(threshold=0.1), NormalConsistency(cutoff=0.2)


def _update(metrics, scene):
    pred_pts, pred_n, gt_pts, gt_n = scene
    metrics[0].update(pred_pts, gt_pts)
    metrics[1].update(pred_pts, gt_pts)
    metrics[2].update(pred_pts, pred_n, gt_pts, gt_n)


def test_metric_classes_average_per_scene_values():
    scenes = _scenes()
    metrics = _metrics()
    for scene in scenes:
        _update(metrics, scene)
    expected_cd = np.mean([float(chamfer(s[0], s[2])) for s in scenes])
    assert float(metrics[0].compute()) == pytest.approx(expected_cd)
    assert float(metrics[1].compute()["precision"]) == pytest.approx(2 / 3)  # 2 of 3 scenes within 10 cm
    assert float(metrics[1].compute()["f_harmonic"]) == pytest.approx(2 / 3)
    assert float(metrics[2].compute()) == pytest.approx(2 / 3)  # and within the 20 cm cutoff


def _two_rank_all_gather(local, remote):
    """A ``dist_sync_fn`` for ``local``: all-gathers each state from two ranks as ``[local's, remote's]``."""

    def all_gather(tensor, group=None):
        name = next(n for n in local._defaults if getattr(local, n) is tensor)
        return [tensor, getattr(remote, name)]

    return all_gather


def test_states_reduce_like_a_ddp_sync():
    """Two ranks holding different scenes, synchronised (torchmetrics' own sync path with a simulated
    all-gather) or merged with merge_state, equal one process that saw every scene."""
    scenes = _scenes()
    whole, rank0, rank1, merged = _metrics(), _metrics(), _metrics(), _metrics()
    for scene in scenes:
        _update(whole, scene)
    for scene in scenes[:2]:
        _update(rank0, scene)
        _update(merged, scene)
    _update(rank1, scenes[2])
    for local, remote, into in zip(rank0, rank1, merged):
        assert all(fx.__name__ == "dim_zero_sum" for fx in local._reductions.values())
        local.dist_sync_fn = _two_rank_all_gather(local, remote)
        local.distributed_available_fn = lambda: True
        into.merge_state(remote)
    for synced, merged_metric, reference in zip(rank0, merged, whole):
        ref = reference.compute()
        for result in (synced.compute(), merged_metric.compute()):
            if isinstance(ref, dict):
                assert all(float(result[k]) == pytest.approx(float(ref[k])) for k in ref)
            else:
                assert float(result) == pytest.approx(float(ref))
    # compute() un-syncs afterwards: rank 0 still holds only its own two scenes
    assert int(rank0[0].num_scenes) == 2


def test_image_metrics():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    pred = (target + 0.1).clamp(0, 1)
    pred[1] = target[1]
    values = psnr(pred[:1], target[:1])
    mse = ((pred[0] - target[0]) ** 2).mean()
    assert float(values[0]) == pytest.approx(float(-10 * torch.log10(mse)), rel=1e-5)
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mask[:, :, :16] = True
    noisy = target.clone()
    noisy[:, :, 16:] = 0.0  # damage outside the mask only
    noisy[:, :, :16] += 0.01
    assert torch.allclose(psnr(noisy, target, mask), torch.full((2,), 40.0), atol=0.5)
    assert float(ssim(target, target)) == pytest.approx(1.0)
    # the accumulating metric averages per-image PSNR (20 and 40 dB -> 30), not a pooled MSE (~23 dB)
    offset = torch.tensor([0.1, 0.01])[:, None, None, None]
    collection = image_metrics(prefix="val/")
    collection.update(target + offset, target)
    result = collection.compute()
    assert set(result) == {"val/psnr", "val/ssim"} and float(result["val/psnr"]) == pytest.approx(30.0, abs=1e-3)
