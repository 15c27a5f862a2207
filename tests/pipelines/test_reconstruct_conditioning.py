"""The reconstructor's 3-D conditioning: streamed over points, and the photo cue sees the scene's views."""

from __future__ import annotations

from types import SimpleNamespace

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
