"""infer.py end to end on a tiny synthetic room with tiny checkpoints trained by train.py in the fixture."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from genrecon.tasks.infer import infer
from tests.conftest import STAGES, compose_config


def _infer(root: Path, ckpts: Path, out: Path, extra=()):
    scene = sorted((root / "scenes").iterdir())[-1]
    cfg = compose_config("infer", [
        "input=prepared", f"input.scene_dir={scene}", f"ckpt_dir={ckpts}", f"paths.output_dir={out}",
        "num_imgs_per_scene=8", "min_points_per_chunk=20", "points.radius_m=0.5", "occ_threshold=-20", "glb.texture_size=128",
        "samplers.ss.steps=3", "samplers.shape.steps=3", "samplers.tex.steps=3", *extra,
    ])
    return infer(cfg)


def test_infer_writes_textured_glb_and_summary(tiny_pipeline, tmp_path):
    root, ckpts = tiny_pipeline
    summary = _infer(root, ckpts, tmp_path)
    glb = trimesh.load(tmp_path / "scene.glb")
    geoms = list(glb.geometry.values())
    assert geoms
    for g in geoms:
        material = g.visual.material
        assert isinstance(material, trimesh.visual.material.PBRMaterial)
        assert material.baseColorTexture is not None and material.metallicRoughnessTexture is not None
        assert g.visual.uv.shape == (len(g.vertices), 2)
    assert trimesh.load(tmp_path / "mesh.ply").faces.shape[0] == summary["faces"] > 0
    assert (tmp_path / "preview.png").stat().st_size > 0
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["chunks"] >= 1 and {"ss_sampling", "shape_sampling", "decode", "export"} <= set(saved["phases"])
    assert len(json.loads((tmp_path / "views.json").read_text())["views"]) == saved["num_views"] <= 8


def test_infer_runs_sparse_flows_trained_on_block_tokens(tiny_pipeline, tmp_path):
    """Shape and texture flows trained with ``preset.flow.patch_size=2`` (a deviation) load from their checkpoints
    and sample the scene's chunks jointly: the patched models take the chunk-local cells the joint sampler gives."""
    from tests.conftest import _train_stage

    root, ckpts = tiny_pipeline
    patched = tmp_path / "ckpts"
    shutil.copytree(ckpts, patched)
    for stage in ("shape_flow", "tex_flow"):
        ckpt = _train_stage(stage, root, tmp_path / stage, ["preset.flow.patch_size=2"])
        assert torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]["model.fine_out.weight"].ndim == 2
        shutil.copy(ckpt, patched / f"{stage}.ckpt")
    summary = _infer(root, patched, tmp_path / "out")
    assert summary["faces"] > 0 and (tmp_path / "out" / "scene.glb").stat().st_size > 0


def test_ss_draws_averaged_as_occupancy_reconstruct_the_scene(tiny_pipeline, tmp_path):
    root, ckpts = tiny_pipeline
    summary = _infer(root, ckpts, tmp_path, ["samplers.ss.draws=2", "ss_draw_mean=occupancy"])
    assert summary["faces"] > 0 and (tmp_path / "scene.glb").is_file()


def test_wrong_checkpoint_for_stage_fails_without_glb(tiny_pipeline, tmp_path):
    root, ckpts = tiny_pipeline
    bad = tmp_path / "ckpts"
    shutil.copytree(ckpts, bad)
    shutil.copy(ckpts / "shape_vae.ckpt", bad / "ss_vae.ckpt")
    with pytest.raises(Exception, match="ss_vae.ckpt.*genrecon.stage.*shape_vae"):
        _infer(root, bad, tmp_path / "out")
    assert not (tmp_path / "out" / "scene.glb").exists()


def test_missing_view_image_names_the_file(tiny_pipeline, tmp_path):
    root, ckpts = tiny_pipeline
    scene = tmp_path / "scene"
    shutil.copytree(sorted((root / "scenes").iterdir())[-1], scene)
    (scene / "views" / "rgba_001.png").unlink()
    cfg = compose_config("infer", ["input=prepared", f"input.scene_dir={scene}", f"ckpt_dir={ckpts}",
                                   f"paths.output_dir={tmp_path / 'out'}"])
    with pytest.raises(Exception, match="rgba_001.png"):
        infer(cfg)
    assert not (tmp_path / "out" / "scene.glb").exists()


def test_overlap_is_seamless_on_a_two_chunk_scene(tiny_pipeline):
    """Two chunks overlapping by half: the merged surface in the overlap is a single layer, and what chunk A
    decodes on its own lies within one voxel of the merged surface there."""
    from scipy.spatial import cKDTree

    from genrecon.geometry.chunks import Chunk
    from genrecon.geometry.mesh import sample_surface
    from genrecon.geometry.ovoxel import ovoxel_to_mesh
    from genrecon.geometry.tiling import SceneTiling
    from genrecon.modules.sparse.tensor import SparseTensor
    from genrecon.pipelines.reconstruct import ReconstructionSettings, SceneReconstructor
    from genrecon.stages.loading import load_stage
    from genrecon.tasks.infer import load_prepared_scene

    root, ckpts = tiny_pipeline
    views, _ = load_prepared_scene(sorted((root / "scenes").iterdir())[-1])
    stages = {s: load_stage(ckpts / f"{s}.ckpt", s) for s in STAGES}
    edge = 2.85
    origin = np.array([0.0, 0.0, -0.02])
    offsets = np.array([[0, 0, 0], [8, 0, 0]])
    chunks = [Chunk(tuple(origin + (o / 16 + 0.5) * edge), edge, 0.0) for o in offsets]
    tiling = SceneTiling(chunks, edge, origin, offsets, np.array([1000, 1000]), 0,
                         (origin[:2], origin[:2] + edge, 0.0, edge))
    images = torch.stack([torch.from_numpy(views.load_image(i)[..., :3].copy()).permute(2, 0, 1).float() / 255
                          for i in range(8)])
    images = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear")
    settings = ReconstructionSettings(samplers={k: {"steps": 3} for k in ("ss", "shape", "tex")}, occ_threshold=-20.0)
    rec = SceneReconstructor(stages, settings, torch.device("cpu"))
    result = rec(images, views.w2c[:8], views.K[:8], tiling)
    r_fine = stages["shape_flow"].model.resolution * 2 ** stages["shape_vae"].decoder.num_upsamples
    voxel = edge / r_fine

    # The overlap region, kept away from both chunks' outer faces by the decoder's context.
    lo = origin + np.array([0.5 + 0.15, 0.15, 0.15]) * edge
    hi = origin + np.array([1.0 - 0.15, 0.85, 0.85]) * edge
    pts, face_idx, _ = sample_surface(result.vertices, result.faces, 20000, np.random.default_rng(0))
    inside = np.all((pts > lo) & (pts < hi), axis=1)
    assert inside.sum() > 100
    tri = result.vertices[result.faces[face_idx[inside]]]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    p = pts[inside]
    tree = cKDTree(pts)
    doubled = 0
    for i, nbrs in enumerate(tree.query_ball_point(p, 1.5 * voxel)):
        d = pts[nbrs] - p[i]
        along = d @ normals[i]
        lateral = np.linalg.norm(d - along[:, None] * normals[i], axis=1)
        doubled += bool(np.any((np.abs(along) > 0.6 * voxel) & (lateral < 0.25 * voxel)))
    assert doubled / len(p) < 0.05, doubled / len(p)

    # Chunk A decoded on its own, from its own (jointly sampled) latents.
    layout = rec.last_chunks["layout"]
    shape_a = stages["shape_flow"].denormalise(rec.last_chunks["shape"][0], 1)
    coords = torch.cat([torch.zeros(len(layout.local[0]), 1, dtype=torch.int32),
                        torch.as_tensor(layout.local[0], dtype=torch.int32)], 1)
    recon_a, _ = stages["shape_vae"].decode(SparseTensor(coords, shape_a))
    f = recon_a.feats.float().numpy()
    va, fa, _ = ovoxel_to_mesh(coords=recon_a.coords[:, 1:].numpy(), vertex_offset=f[:, :3],
                               intersected=f[:, 3:6] > 0, resolution=r_fine)
    va_world = (va + 0.5) * edge + origin  # chunk A's frame: its cube [-0.5, 0.5]^3 starts at the origin
    pa, _, _ = sample_surface(va_world, fa, 20000, np.random.default_rng(1))
    pa = pa[np.all((pa > lo) & (pa < hi), axis=1)]
    assert len(pa) > 100
    dense, _, _ = sample_surface(result.vertices, result.faces, 200000, np.random.default_rng(2))
    dist, _ = cKDTree(dense).query(pa)
    assert np.mean(dist < voxel) > 0.95, np.mean(dist < voxel)
