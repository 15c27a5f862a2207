"""The reconstructor's 3-D conditioning: streamed over points, and the photo cue sees the scene's views."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genrecon.pipelines.reconstruct import ReconstructionSettings, SceneReconstructor
from tests.models.test_flow_transformer import DenseFlowTransformer, _tiny, _views


def test_scene_condition_equals_the_models_own_and_feeds_the_photo_cue_the_views() -> None:
    torch.manual_seed(0)
    model = _tiny(DenseFlowTransformer, conditioned=True, photo_cue={"subdivisions": 2, "hidden": 16})
    tokens, w2c, K, _ = _views(1, n_views=3)
    images = torch.rand(3, 3, 16, 16)
    points = torch.rand(40, 3) - 0.5
    settings = ReconstructionSettings()
    settings.proj_batch_voxels = 2  # streams: 16 points per call
    names = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")
    rec = SceneReconstructor({n: SimpleNamespace(model=model) for n in names}, settings, torch.device("cpu"))
    out = rec._cond_3d(SimpleNamespace(model=model), points, tokens, w2c[0], K[0], images)
    mask = torch.ones(1, 3, dtype=torch.bool)
    ref = model.compute_cond_3d(points, torch.zeros(40, dtype=torch.long), tokens, w2c, K, mask, images=images[None])
    torch.testing.assert_close(out, ref)
    # Different views change the cue (and so the condition).
    assert not torch.allclose(out, rec._cond_3d(SimpleNamespace(model=model), points, tokens, w2c[0], K[0],
                                                 torch.rand(3, 3, 16, 16)))


def test_scene_condition_with_structure_visibility_uses_one_z_buffer_of_all_cells() -> None:
    """The reconstructor conditions the cells in pieces; with structure visibility every piece is tested against
    the z-buffer of all the cells, not of its own (the back wall's piece would see through the front wall)."""
    from genrecon.models.flow_transformer import SparseFlowTransformer
    from tests.models.test_visibility import R, two_wall_scene

    torch.manual_seed(0)
    model = _tiny(SparseFlowTransformer, resolution=R, conditioned=True, visibility={"grid": 64})
    points, bidx, w2c, K, mask = two_wall_scene()  # 64 front-wall cells, then 64 back-wall cells
    tokens = torch.randn(1, 3, 1 + 4, 32)
    settings = ReconstructionSettings()
    settings.proj_batch_voxels = 2  # streams: 16 points per call
    names = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")
    rec = SceneReconstructor({n: SimpleNamespace(model=model) for n in names}, settings, torch.device("cpu"))
    out = rec._cond_3d(SimpleNamespace(model=model), points, tokens, w2c[0], K[0], torch.rand(3, 3, 16, 16))
    torch.testing.assert_close(out, model.compute_cond_3d(points, bidx, tokens, w2c, K, mask))
    pieces = torch.cat([model.compute_cond_3d(points[i : i + 16], bidx[i : i + 16], tokens, w2c, K, mask)
                        for i in range(0, 128, 16)])
    assert not torch.allclose(out[64:], pieces[64:])


def test_world_points_land_where_the_chunk_frame_cameras_see_them() -> None:
    import numpy as np

    from genrecon.geometry.cameras import look_at, project_points, w2c_in_chunk_frame
    from genrecon.geometry.chunks import Chunk
    from genrecon.pipelines.reconstruct import points_in_frame

    frame = Chunk(center=(1.0, -2.0, 1.4), edge_m=2.85, yaw=0.0)
    w2c = look_at(np.array([3.0, 1.0, 1.5]), np.array([1.0, -2.0, 1.0]))[None]
    K = np.array([[[0.8, 0, 0.5], [0, 0.8, 0.5], [0, 0, 1]]])
    world = np.random.default_rng(0).uniform([0, -3, 0.5], [2, -1, 2], size=(50, 3))
    uv_world, depth_world = project_points(world, w2c[0], K[0])
    local = points_in_frame(world, frame).double().numpy()
    uv_local, depth_local = project_points(local, w2c_in_chunk_frame(w2c, frame.chunk_from_world)[0], K[0])
    np.testing.assert_allclose(uv_local, uv_world, atol=1e-9)
    np.testing.assert_allclose(depth_local, depth_world / 2.85, rtol=1e-6)  # chunk units: the edge is 1


def test_point_depth_stage_takes_the_scenes_points_and_needs_them() -> None:
    from tests.stages.test_flow_point_depth import _stage

    stage = _stage().eval()
    model = stage.model
    g, p = model.projection.num_global_tokens, model.projection.patch_grid
    tokens = torch.randn(1, 3, g + p * p, model.cond_channels)
    _, w2c, K, _ = _views(1, n_views=3)
    settings = ReconstructionSettings(point_depth_max_points=64)
    rec = SceneReconstructor({n: SimpleNamespace(model=model) for n in
                              ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")},
                             settings, torch.device("cpu"))
    points = torch.rand(64, 3) - 0.5
    given = rec._input_points(stage, points, torch.Generator().manual_seed(0))
    torch.testing.assert_close(given, points)
    out = rec._point_depth_logits(stage, tokens, given, w2c[0], K[0])
    mask = torch.ones(1, 3, dtype=torch.bool)
    ref = model.point_depth_logits(tokens, points, torch.zeros(64, dtype=torch.long), w2c, K, mask, 2)
    torch.testing.assert_close(out, ref)
    # More points than the cap: a random subset of the cap's size.
    many = torch.cat([points, points + 10.0])  # the extra ones far outside every view
    capped = rec._input_points(stage, many, torch.Generator().manual_seed(0))
    assert capped.shape == (64, 3) and (capped.abs() > 5).any()
    assert not torch.allclose(rec._point_depth_logits(stage, tokens, capped, w2c[0], K[0]), out)
    with pytest.raises(ValueError, match="points"):
        rec._input_points(stage, None, torch.Generator())
    # The scene condition reads them: the same as the model's own with these logits, not the head's.
    torch.nn.init.normal_(model.depth_cue.to_feature.weight)  # open the cue's zero-initialised injection
    cells = torch.rand(30, 3) - 0.5
    images = torch.rand(3, 3, 32, 32)
    cond = rec._cond_3d(stage, cells, tokens, w2c[0], K[0], images, out)
    ref = model.compute_cond_3d(cells, torch.zeros(30, dtype=torch.long), tokens, w2c, K, mask, depth_logits=out)
    torch.testing.assert_close(cond, ref)
    assert not torch.allclose(cond, rec._cond_3d(stage, cells, tokens, w2c[0], K[0], images))
    # A stage without point_depth ignores them.
    assert rec._input_points(SimpleNamespace(model=model), points, torch.Generator()) is None
    assert rec._point_depth_logits(SimpleNamespace(model=model), tokens, None, w2c[0], K[0]) is None


def test_point_grid_of_the_scene_canvas_matches_each_chunks_own() -> None:
    """The reconstructor counts the scene's points once over the canvas of all chunks; split into chunks, the
    cue's addition equals the model's for each chunk's own points in its own frame."""
    from genrecon.models.point_grid import PointGridCue
    from genrecon.pipelines.multi_chunk import DenseLayout

    torch.manual_seed(0)
    r = 4
    cue = PointGridCue(8, subdivisions=2)
    torch.nn.init.normal_(cue.to_feature.weight)
    layout = DenseLayout(np.array([[0, 0, 0], [2, 0, 1]]), r)  # two chunks overlapping by half along x
    stage = SimpleNamespace(model=SimpleNamespace(point_grid=cue))
    names = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")
    rec = SceneReconstructor({n: stage for n in names}, ReconstructionSettings(), torch.device("cpu"))
    canvas_extent = torch.tensor(layout.canvas_shape, dtype=torch.float32) / r
    points = torch.rand(500, 3) * canvas_extent - 0.5  # the canvas starts at -0.5 like chunk 0
    grid = rec._point_grid(stage, points, layout)  # [X·Y·Z, C]
    canvas = grid.T.reshape(8, *layout.canvas_shape)
    for (x, y, z), chunk in zip(layout.offsets, layout.split(canvas)):
        local = points - torch.tensor([x, y, z], dtype=torch.float32) / r
        own = cue(cue.counts(local, torch.zeros(len(local), dtype=torch.long), 1, (r, r, r)))[0]
        torch.testing.assert_close(chunk.flatten(1).T, own)
    assert rec._point_grid(SimpleNamespace(model=SimpleNamespace()), points, layout) is None


def test_scene_tokens_of_a_floor_ray_encoder_read_the_grid_frame_cameras() -> None:
    """An encoder with floor-ray channels gets the maps of the views' grid-frame cameras (floor at z = -0.5), the
    same tokens the flow stage computes for a chunk whose frame is the grid's; a colour-only one ignores them."""
    from genrecon.geometry.cameras import intrinsics_from_fov, look_at
    from genrecon.geometry.floor_rays import append_floor_rays
    from genrecon.models.image_encoder import SmallCNN, encode_views

    torch.manual_seed(0)
    w2c = torch.tensor(look_at([[0.0, 0.0, 0.1], [0.2, 0.1, 0.2]], [[0.4, 0.3, -0.5], [-0.3, 0.2, -0.4]]),
                       dtype=torch.float32)
    K = torch.tensor(intrinsics_from_fov(np.array([1.0, 1.2])), dtype=torch.float32)
    images = torch.rand(2, 3, 32, 32)
    names = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")
    encoder = SmallCNN(channels=(8, 8), out_channels=16, geometry_channels=2).eval()
    stage = SimpleNamespace(hparams={"image_size": 32}, image_encoder=encoder)
    rec = SceneReconstructor({n: stage for n in names}, ReconstructionSettings(), torch.device("cpu"))
    tokens = rec._tokens(stage, images, w2c, K)
    mask = torch.ones(1, 2, dtype=torch.bool)
    expected = encode_views(encoder, append_floor_rays(images, w2c, K, floor_z=-0.5)[None], mask)
    torch.testing.assert_close(tokens, expected)
    raised = w2c.clone()
    raised[:, :3, 3] -= raised[:, :3, 2] * 0.3  # the cameras 0.3 higher: other floor maps, other tokens
    assert not torch.allclose(rec._tokens(stage, images, raised, K), tokens, atol=1e-4)
    plain = SimpleNamespace(hparams={"image_size": 32}, image_encoder=SmallCNN(channels=(8, 8), out_channels=16))
    torch.testing.assert_close(rec._tokens(plain, images, raised, K), rec._tokens(plain, images, w2c, K))
