"""Sample pictures: each flow stage's generation and the truth rendered from the sample's first view."""

import numpy as np
import pytest

from callbacks.flow_samples import FlowSampleImages, occupancy_mesh
from datamodules.chunks import ChunkDataModule
from genrecon.stages.loading import load_stage


def test_occupancy_mesh_is_the_surface_of_the_cells():
    occ = np.zeros((4, 4, 4), bool)
    occ[1:3, 1:3, 1:3] = True  # a 2x2x2 block: 6 faces of 2x2 cells, 2 triangles each
    mesh = occupancy_mesh(occ)
    assert mesh.num_faces == 6 * 4 * 2
    assert np.allclose(mesh.face_areas().sum(), 6 * (0.5**2))


@pytest.mark.parametrize("stage", ["ss_flow", "shape_flow", "tex_flow"])
def test_pictures_show_input_generation_and_truth(tiny_pipeline, stage):
    root, ckpts = tiny_pipeline
    module = load_stage(ckpts / f"{stage}.ckpt", stage)
    fields = {"ss_flow": ["ss_latent", "views", "occupancy"], "shape_flow": ["shape_latent", "views"],
              "tex_flow": ["shape_latent", "tex_latent", "views"]}[stage]
    batch = next(iter(ChunkDataModule(str(root / "latents"), fields, batch_size=2, min_view_coverage=0.0,
                                      max_views=2).val_dataloader()))
    cb = FlowSampleImages(max_samples=2, image_size=48, **{f"{k}_ckpt": str(ckpts / f"{k}.ckpt")
                                                           for k in ("ss_vae", "shape_vae", "tex_vae")})
    rows = cb.picture_rows(module, batch)
    assert len(rows) == 2
    for row in rows:
        assert [img.shape for img in row] == [(48, 48, 3)] * 3
    # the truth render shows geometry (ground-truth latents decode to a non-empty surface)
    assert any(row[2].any() for row in rows)
