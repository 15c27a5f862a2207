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
