"""Structure visibility: a z-buffer of the active cells says which views see each cell, and the sparse flows'
projection pathway (and photo cue) fuse only those views."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from genrecon.models.aggregator import project_and_aggregate
from genrecon.models.flow_transformer import SparseFlowTransformer
from genrecon.models.photo_consistency import PhotoConsistency, sub_offsets
from genrecon.models.projection import Projection, coords_to_points
from genrecon.models.visibility import StructureVisibility
from tests.models.test_aggregator import masked_mean, randomised
from tests.models.test_flow_transformer import _randomise_outputs, _tiny
from tests.models.test_projection import intrinsics, look_at

R = 16  # cell grid of the scenes below
FRONT, BACK, SIDE = [0.0, -2.0, 0.1], [0.0, 2.0, 0.1], [2.0, 0.3, 0.1]


def walls(front: int = 4, back: int = 11, lo: int = 4, hi: int = 12) -> torch.Tensor:
    """Cell coords ``[2·M, 3]`` of two walls across y (x, z in [lo, hi)): the front one at y index ``front``, then
    the back one at ``back``."""
    x, z = (a.flatten() for a in torch.meshgrid(torch.arange(lo, hi), torch.arange(lo, hi), indexing="ij"))
    return torch.cat([torch.stack([x, torch.full_like(x, y), z], 1) for y in (front, back)])


def cameras(eyes: list[list[float]], b: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w2c ``[b, N, 4, 4]`` looking at the chunk centre from ``eyes``, K ``[b, N, 3, 3]`` (60°), all-real mask."""
    n = len(eyes)
    w2c = torch.stack([look_at(torch.tensor(e), torch.zeros(3)) for e in eyes])[None].repeat(b, 1, 1, 1)
    return w2c, intrinsics(60.0)[None, None].repeat(b, n, 1, 1), torch.ones(b, n, dtype=torch.bool)


def two_wall_scene(eyes=(FRONT, BACK, SIDE)) -> tuple[torch.Tensor, ...]:
    points = coords_to_points(walls(), R)
    return (points, torch.zeros(len(points), dtype=torch.long), *cameras(list(eyes)))


def test_the_front_wall_hides_the_back_wall() -> None:
    points, bidx, w2c, K, mask = two_wall_scene()
    vis = StructureVisibility()(points, bidx, w2c, K, mask, 1.0 / R)
    assert vis.shape == (128, 3) and vis.dtype == torch.bool
    front, back = vis[:64], vis[64:]
    # Each wall is seen whole by the camera on its side and not at all by the one behind the other wall.
    assert front[:, 0].all() and not back[:, 0].any()
    assert back[:, 1].all() and not front[:, 1].any()
    # The published rule counts every projection, hidden or not.
    _, _, valid, _ = Projection.project(points, bidx, w2c, K, mask)
    assert valid[:, :2].all()
    # Removing the front wall reveals the back wall to the front camera.
    alone = StructureVisibility()(points[64:], bidx[64:], w2c, K, mask, 1.0 / R)
    assert alone[:, 0].all()
    # The side camera sees both walls edge-on: the cells nearest to it, not the far ends of the rows.
    x = walls()[:, 0]
    assert vis[x == 11, 2].all() and not vis[x == 4, 2].any()


@pytest.mark.parametrize("subdivisions", [1, 2, 3])
def test_a_cell_never_hides_itself(subdivisions: int) -> None:
    torch.manual_seed(0)
    module = StructureVisibility(grid=16, subdivisions=subdivisions, tolerance=0.0)
    eyes = (torch.randn(12, 3) * 1.5).tolist() + [[0.0, 0.3, 3.0], [0.05, 0.0, 0.0]]
    w2c, K, mask = cameras(eyes)
    for cell in torch.randint(0, R, (6, 3)):
        point = coords_to_points(cell[None], R)
        vis = module(point, torch.zeros(1, dtype=torch.long), w2c, K, mask, 1.0 / R)
        # What "sees it" means: some sub-point projects in front of the camera and into the image.
        sub = point + sub_offsets(subdivisions, 1.0 / R)
        _, _, valid, _ = Projection.project(sub, torch.zeros(len(sub), dtype=torch.long), w2c, K, mask)
        assert torch.equal(vis[0], valid.any(0))
    assert vis.any() and not vis.all()  # some cameras see the cells, some (behind or beside) do not


def test_view_order_and_padded_views() -> None:
    torch.manual_seed(1)
    b, n = 2, 4
    coords = torch.randint(2, 14, (150, 3))
    points, bidx = coords_to_points(coords, R), torch.tensor([0] * 90 + [1] * 60)
    eyes = (torch.randn(n, 3) * 0.8 + torch.tensor([0.0, 0.0, 1.5])).tolist()
    w2c, K, mask = cameras(eyes, b)
    w2c[1] = w2c[1].flip(0)  # the samples have different cameras
    module = StructureVisibility(grid=32, batch_points=50)
    vis = module(points, bidx, w2c, K, mask, 1.0 / R)
    assert vis.any() and not vis.all()
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(module(points, bidx, w2c[:, perm], K[:, perm], mask[:, perm], 1.0 / R), vis[:, perm])
    w2c_p, K_p, mask_p = (torch.cat([t, torch.zeros_like(t[:, :2])], 1) for t in (w2c, K, mask))
    padded = module(points, bidx, w2c_p, K_p, mask_p, 1.0 / R)
    assert torch.equal(padded[:, :n], vis) and not padded[:, n:].any()
    # Streaming over sub-points changes nothing.
    module.batch_points = 10**6
    assert torch.equal(module(points, bidx, w2c, K, mask, 1.0 / R), vis)
    # The one-call path projects each cell once for the z-buffer and the test against it, the two-call path twice.
    calls = []
    splat = module._splat
    module._splat = lambda *args: calls.append(1) or splat(*args)
    module.batch_points = 8 * 60  # 60 cells a batch: 3 batches of the 150 cells
    assert torch.equal(module(points, bidx, w2c, K, mask, 1.0 / R), vis) and len(calls) == 3
    calls.clear()
    zbuf = module.zbuffer(points, bidx, w2c, K, mask, 1.0 / R)
    assert torch.equal(module.visible(zbuf, points, bidx, w2c, K, mask, 1.0 / R), vis) and len(calls) == 6


def test_samples_do_not_occlude_each_other() -> None:
    points, bidx, w2c, K, mask = two_wall_scene()
    w2c, K, mask = (t.repeat(2, *[1] * (t.dim() - 1)) for t in (w2c, K, mask))
    bidx = torch.cat([torch.zeros(64), torch.ones(64)]).long()  # front wall in sample 0, back wall in sample 1
    vis = StructureVisibility()(points, bidx, w2c, K, mask, 1.0 / R)
    assert vis[:, 0].all() and vis[:, 1][64:].all()


def test_project_and_aggregate_fuses_only_the_views_that_see_each_voxel() -> None:
    points, bidx, w2c, K, mask = two_wall_scene()
    tokens = torch.randn(1, 3, 1 + 16, 8, generator=torch.Generator().manual_seed(2))
    projection, agg, module = Projection(1, 4), randomised(), StructureVisibility()
    zbuf = module.zbuffer(points, bidx, w2c, K, mask, 1.0 / R)
    assert zbuf.shape == (1, 3, 64, 64) and torch.isinf(zbuf).any() and torch.isfinite(zbuf).any()
    vis = module.visible(zbuf, points, bidx, w2c, K, mask, 1.0 / R)
    feats, valid = projection(points, bidx, tokens, w2c, K, mask)
    assert (valid & ~vis).any()  # the mask removes something
    expected = agg(feats, valid & vis)
    for batch_voxels in (3, 10_000):
        out = project_and_aggregate(projection, agg, points, bidx, tokens, w2c, K, mask, batch_voxels=batch_voxels,
                                    visible=vis)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    plain = project_and_aggregate(projection, agg, points, bidx, tokens, w2c, K, mask)
    assert not torch.allclose(plain, expected)
    # The checkpointed (training) path gives the same output and gradients reach the aggregator.
    out = project_and_aggregate(projection, agg, points, bidx, tokens, w2c, K, mask, batch_voxels=3,
                                checkpoint=True, visible=vis)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    out.square().sum().backward()
    assert agg.feature_mlp[4].weight.grad.abs().sum() > 0


def _sparse_pair(**kw) -> tuple[SparseFlowTransformer, SparseFlowTransformer]:
    torch.manual_seed(3)
    plain = _tiny(SparseFlowTransformer, resolution=R, conditioned=True, **kw)
    seeing = _tiny(SparseFlowTransformer, resolution=R, conditioned=True, visibility={"grid": 64}, **kw)
    seeing.load_state_dict(plain.state_dict())  # strict: the module adds no parameters or buffers
    return plain, seeing


def test_sparse_flow_fuses_visible_views_and_stays_inert_at_init() -> None:
    plain, seeing = _sparse_pair()
    assert isinstance(seeing.visibility, StructureVisibility) and plain.visibility is None
    coords = torch.cat([torch.zeros(128, 1, dtype=torch.int32), walls().int()], 1)
    points, bidx, w2c, K, mask = two_wall_scene()
    tokens = torch.randn(1, 3, 1 + 4, 32, generator=torch.Generator().manual_seed(4))
    cond = seeing.cond_3d_from_views(coords, tokens, w2c, K, mask, batch_voxels=5)
    # At init the aggregator is the masked mean: here over the views that see each cell only.
    feats, valid = seeing.projection(points, bidx, tokens, w2c, K, mask)
    vis = StructureVisibility()(points, bidx, w2c, K, mask, 1.0 / R)
    torch.testing.assert_close(cond, masked_mean(feats, valid & vis), atol=1e-6, rtol=0)
    torch.testing.assert_close(plain.cond_3d_from_views(coords, tokens, w2c, K, mask), masked_mean(feats, valid),
                               atol=1e-6, rtol=0)
    assert not torch.allclose(cond, plain.cond_3d_from_views(coords, tokens, w2c, K, mask))
    # A precomputed z-buffer of the same cells gives the same condition.
    zbuf = seeing.structure_zbuffer(points, bidx, w2c, K, mask)
    torch.testing.assert_close(seeing.compute_cond_3d(points, bidx, tokens, w2c, K, mask, zbuffer=zbuf), cond)
    assert plain.structure_zbuffer(points, bidx, w2c, K, mask) is None
    # The zero-initialised injections keep the conditioned output equal to the unconditional one.
    _randomise_outputs(seeing)
    x, t, c = torch.randn(128, 4), torch.rand(1), torch.randn(1, 5, 32)
    out = seeing(x, t, c, cond, coords=coords)
    assert torch.equal(out, seeing(x, t, c, torch.zeros_like(cond), coords=coords))
    for linear in seeing.proj_linears:
        nn.init.normal_(linear.weight, std=0.1)
    assert not torch.allclose(seeing(x, t, c, cond, coords=coords), out)


def test_photo_cue_counts_only_the_views_that_see_the_cell() -> None:
    points, bidx, w2c, K, mask = two_wall_scene(eyes=(FRONT, BACK))
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the front camera sees red, the back one green
    images = colours[None, :, :, None, None].expand(1, 2, 3, 16, 16).contiguous()
    cue = PhotoConsistency(resolution=R, cond_channels=4, subdivisions=2)
    vis = StructureVisibility()(points, bidx, w2c, K, mask, 1.0 / R)
    plain = cue.statistics(images, points, bidx, w2c, K, mask)
    seen = cue.statistics(images, points, bidx, w2c, K, mask, vis)
    torch.testing.assert_close(plain[..., :3], torch.tensor([0.5, 0.5, 0.0]).expand(128, 8, 3))
    torch.testing.assert_close(seen[:64, :, :3], colours[0].expand(64, 8, 3))  # front wall: red only
    torch.testing.assert_close(seen[64:, :, :3], colours[1].expand(64, 8, 3))  # back wall: green only
    torch.testing.assert_close(seen[..., 4], torch.full((128, 8), 0.5))  # one of two views
    # In the flow, the cue gets the same mask as the aggregator.
    _, seeing = _sparse_pair(photo_cue={"subdivisions": 2, "hidden": 8})
    coords = torch.cat([torch.zeros(128, 1, dtype=torch.int32), walls().int()], 1)
    tokens = torch.randn(1, 2, 1 + 4, 32, generator=torch.Generator().manual_seed(5))
    cond = seeing.cond_3d_from_views(coords, tokens, w2c, K, mask, images=images)
    feats, valid = seeing.projection(points, bidx, tokens, w2c, K, mask)
    expected = masked_mean(feats, valid & vis) + seeing.photo_cue(images, points, bidx, w2c, K, mask, vis)
    torch.testing.assert_close(cond, expected, atol=1e-5, rtol=0)


def test_visibility_needs_the_projection_pathway_and_sane_arguments() -> None:
    with pytest.raises(ValueError, match="projection pathway"):
        _tiny(SparseFlowTransformer, visibility={"grid": 8})
    with pytest.raises(ValueError, match="positive"):
        StructureVisibility(grid=0)
    with pytest.raises(ValueError, match="tolerance"):
        StructureVisibility(tolerance=-1.0)
    module = StructureVisibility(grid=8)
    points, bidx, w2c, K, mask = two_wall_scene()
    with pytest.raises(ValueError, match="z-buffer"):
        module.visible(torch.zeros(1, 3, 4, 4), points, bidx, w2c, K, mask, 1.0 / R)
    empty = module(points[:0], bidx[:0], w2c, K, mask, 1.0 / R)
    assert empty.shape == (0, 3)


def test_a_cell_hidden_from_every_view_falls_back_to_the_published_rule() -> None:
    """Only the front camera: the back wall is hidden in every view. Strictly it gets no view; with the fallback
    (the default) every real view, which the projection's valid mask then narrows to the published rule."""
    points, bidx, w2c, K, mask = two_wall_scene(eyes=(FRONT,))
    w2c, K = torch.cat([w2c, torch.zeros_like(w2c)], 1), torch.cat([K, K], 1)  # plus one padded view
    mask = torch.tensor([[True, False]])
    strict = StructureVisibility(fallback=False)(points, bidx, w2c, K, mask, 1.0 / R)
    default = StructureVisibility()(points, bidx, w2c, K, mask, 1.0 / R)
    assert strict[:64, 0].all() and not strict[64:].any()
    assert torch.equal(default[:64], strict[:64])  # seen cells keep exactly the views that see them
    assert default[64:, 0].all() and not default[:, 1].any()  # hidden ones: the real view, never the padded one
    valid = Projection.project(points, bidx, w2c, K, mask)[2]
    assert torch.equal((valid & default)[64:], valid[64:])
