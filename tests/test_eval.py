"""eval.py end to end: a box scene in the prepared layout, a reconstruction shifted by a known amount plus
junk far from every input view, and the numbers that must come out."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import trimesh
import trimesh.remesh

from genrecon.geometry.cameras import intrinsics_from_fov, look_at
from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.geometry.primitives import box
from genrecon.render.embree import EmbreeRasterizer
from genrecon.render.shading import render_views, save_depth_png, save_rgba_png
from genrecon.tasks.eval import Y_UP_TO_Z_UP, evaluate, load_mesh
from tests.conftest import ROOT, compose_config

EXTENTS = np.array([1.0, 0.8, 0.6])
SHIFT = 0.08  # along x; every sample is within 10 cm of the other surface
SCENE = "box_scene"
GT_BOX = box([0, 0, 0], EXTENTS, PBRMaterial())
SHIFTED_BOX = (GT_BOX.vertices + [SHIFT, 0, 0], GT_BOX.faces)


def shifted_box_chamfer(lx: float, ly: float, lz: float, s: float) -> float:
    """Exact Chamfer distance of a box and its copy shifted by s along x (tests/metrics/test_surface.py)."""
    return (2 * ly * lz * s + 4 * s**3 / 3) / (2 * (lx * ly + lx * lz + ly * lz))


def shifted_box_normal_consistency(lx: float, ly: float, lz: float, s: float) -> float:
    """Normal consistency of the same pair: |n·n'| = 0 where the buried x-face is nearer a side face than
    the other x-face (its rim band of width s), and on the side-face strips x < s that stick out: their
    nearest samples lie on the exposed x-face next to the edge (moving along it costs distance only to
    second order, moving along the side face to first order). Everything else scores 1."""
    buried = ly * lz - (ly - 2 * s) * (lz - 2 * s)
    strips = 2 * s * (ly + lz)
    return 1.0 - (buried + strips) / (2 * (lx * ly + lx * lz + ly * lz))


def write_gt_scene(folder, mesh: PBRMesh) -> None:
    """A prepared scene folder: 8 views from the box's diagonals (views 0 and 7, opposite corners, together
    see every face), scene.json, mesh.ply, depth and RGBA PNGs."""
    centre = EXTENTS / 2
    dirs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    w2c = look_at(centre + 1.3 * dirs, centre)
    K = np.repeat(intrinsics_from_fov(np.radians(60))[None], 8, axis=0)
    renders = render_views(mesh, EmbreeRasterizer(), w2c, K, 96, 96)
    (folder / "views").mkdir(parents=True)
    for i in range(8):
        save_depth_png(folder / "views" / f"depth_{i:03d}.png", renders.depth[i])
        save_rgba_png(folder / "views" / f"rgba_{i:03d}.png", renders.rgba[i])
    mesh.to_trimesh().export(folder / "mesh.ply")
    meta = {"scene_id": folder.name, "image_size": [96, 96], "w2c": w2c.tolist(), "intrinsics": K.tolist()}
    (folder / "scene.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_gt_scene(root / "gt" / SCENE, GT_BOX)
    shifted = PBRMesh(*SHIFTED_BOX, GT_BOX.face_material, GT_BOX.materials)
    junk = box([0, 0, 2.5], [1, 1, 2.51], PBRMaterial())  # 1.9 m above the box: no input view saw it
    pred = root / "pred" / SCENE
    pred.mkdir(parents=True)
    PBRMesh.concatenate([shifted, junk]).to_trimesh().export(pred / "mesh.ply")
    (pred / "views.json").write_text(json.dumps({"views": [0, 7]}))
    # a second reconstruction folder whose input views were not recorded
    (root / "pred_no_views" / SCENE).mkdir(parents=True)
    trimesh.Trimesh(*SHIFTED_BOX).export(root / "pred_no_views" / SCENE / "mesh.ply")
    return root


def run_eval(root, out, *overrides):
    cfg = compose_config("eval", [f"pred_dir={root / 'pred'}", f"gt_dir={root / 'gt'}", f"output_dir={out}",
                                  f"paths.log_dir={root / 'logs'}", *overrides])
    mean = evaluate(cfg)
    return mean, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_cropped_reconstruction_scores_the_shifted_box(folders, tmp_path):
    # 7 cm: no box edge halves to exactly max_edge, where float32 PLY coordinates would decide a split
    mean, results, table = run_eval(folders, tmp_path, "envelope.max_edge_m=0.07")
    row = results["scenes"][0]
    assert row["scene_id"] == SCENE and row["views"] == [0, 7]
    # every face of the (split) shifted box is kept and none of the junk
    box_faces = trimesh.remesh.subdivide_to_size(*SHIFTED_BOX, max_edge=0.07, max_iter=32)[1]
    assert row["pred_faces"] == 24 and row["pred_faces_in_envelope"] == len(box_faces)
    # Sample-to-sample matching adds about half the sample spacing where the surfaces coincide (~2 mm).
    assert row["chamfer_m"] == pytest.approx(shifted_box_chamfer(*EXTENTS, SHIFT), abs=2.5e-3)
    for key in ("precision", "recall", "f_arithmetic", "f_harmonic"):
        assert row[key] == 1.0
    # 0.8877; samples within a few mm of the edges may pick either face, hence the tolerance
    expected_nc = shifted_box_normal_consistency(*EXTENTS, SHIFT)
    assert row["normal_consistency"] == pytest.approx(expected_nc, abs=5e-3)
    assert mean == pytest.approx({k: row[k] for k in mean})
    assert results["num_scenes"] == 1
    assert "| scene | CD (m) | P@10cm | R@10cm | F_arith@10cm | F_harm@10cm | NC |" in table
    assert f"| {SCENE} | {row['chamfer_m']:.4f} | 1.0000 |" in table and "**mean (1)**" in table


def test_envelope_from_gt_visibility_and_without_envelope(folders, tmp_path):
    _, by_depth, _ = run_eval(folders, tmp_path / "depth", "samples=50000")
    _, by_mesh, _ = run_eval(folders, tmp_path / "mesh", "samples=50000", "envelope.source=mesh")
    assert by_mesh["scenes"][0]["pred_faces_in_envelope"] == by_depth["scenes"][0]["pred_faces_in_envelope"]
    assert by_mesh["mean"] == by_depth["mean"]
    _, uncropped, _ = run_eval(folders, tmp_path / "off", "samples=50000", "envelope.enabled=false")
    row = uncropped["scenes"][0]
    assert "views" not in row
    # the junk slab adds 2 m² of far surface to 3.76 m² of box: precision ~ 3.76 / 5.8
    assert row["precision"] == pytest.approx(3.76 / 5.80, abs=0.02) and row["recall"] == 1.0
    assert row["chamfer_m"] > by_depth["mean"]["chamfer_m"] + 0.3


def test_cli_writes_results_to_the_run_directory(folders, tmp_path):
    env = {**os.environ, "GENRECON_RUN_NAME": "unit-eval"}
    out = subprocess.run(
        [sys.executable, "eval.py", f"pred_dir={folders / 'pred'}", f"gt_dir={folders / 'gt'}",
         f"paths.log_dir={tmp_path}", "samples=20000"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "eval" / "runs" / "unit-eval"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["scenes"][0]["recall"] == 1.0 and (run_dir / "results.md").is_file()


def test_missing_inputs_are_named(folders, tmp_path):
    def config(*overrides):
        return compose_config("eval", [f"pred_dir={folders / 'pred'}", f"gt_dir={folders / 'gt'}",
                                       f"output_dir={tmp_path}", "samples=1000", *overrides])

    views_json = folders / "pred_no_views" / SCENE / "views.json"
    with pytest.raises(FileNotFoundError, match=f"missing file {views_json}"):
        evaluate(config(f"pred_dir={folders / 'pred_no_views'}"))
    with pytest.raises(FileNotFoundError, match=f"missing file {tmp_path / SCENE / 'scene.json'}"):
        evaluate(config(f"gt_dir={tmp_path}"))
    with pytest.raises(FileNotFoundError, match=f"none of .*mesh.ply.* in {tmp_path / 'nowhere'}"):
        evaluate(config("scenes=[nowhere]", f"pred_dir={tmp_path}"))
    with pytest.raises(Exception, match="pred_dir"):
        evaluate(config("pred_dir=???"))
    # the recorded views are not needed once the config names them
    evaluate(config(f"pred_dir={folders / 'pred_no_views'}", "views=[0,7]"))
    assert json.loads((tmp_path / "results.json").read_text())["scenes"][0]["views"] == [0, 7]


def test_glb_is_turned_from_y_up(tmp_path):
    """A GLB holding the box in glTF's y-up frame loads back as the z-up box; PLYs load as they are."""
    y_up = SHIFTED_BOX[0] @ Y_UP_TO_Z_UP  # the inverse rotation: z-up -> y-up
    trimesh.Trimesh(y_up, SHIFTED_BOX[1], process=False).export(tmp_path / "scene.glb")
    vertices, faces = load_mesh(tmp_path / "scene.glb")
    assert np.allclose(vertices, SHIFTED_BOX[0], atol=1e-6) and np.array_equal(faces, SHIFTED_BOX[1])
    z_up, _ = load_mesh(tmp_path / "scene.glb", glb_up_axis="z")
    assert np.allclose(z_up, y_up, atol=1e-6)
