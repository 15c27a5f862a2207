"""benchmarks/flow_quality.py on the tiny pipeline: every metric in range, ablation entries, the figure, and
the view choice of the datamodule's validation stream."""

from __future__ import annotations

import json
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.chunks import ChunkDataModule
from tests.conftest import load_script


def _flow_quality():
    return load_script("benchmarks/flow_quality.py")


def test_scores_all_three_flows_and_their_ablations(tiny_pipeline, tmp_path, capsys):
    root, ckpts = tiny_pipeline
    stages = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")
    ck = {s: str(ckpts / f"{s}.ckpt") for s in stages}
    out, figure = tmp_path / "flow_quality.json", tmp_path / "flow_quality.png"
    _flow_quality().main([
        "--latents", str(root / "latents"), "--max-chunks", "2", "--batch-size", "2", "--steps", "2",
        "--samples", "5000", "--device", "cpu", "--figure", str(figure), "--figure-chunks", "1",
        "--figure-size", "48", "--out", str(out),
        "--ss-vae", ck["ss_vae"], "--shape-vae", ck["shape_vae"], "--tex-vae", ck["tex_vae"],
        "--ss-flow", ck["ss_flow"], "--shape-flow", ck["shape_flow"], "--tex-flow", ck["tex_flow"],
        # the same checkpoints as "ablations": the entries must exist and, with the same chunks, views and
        # noise, equal the main ones
        "--ss-flow-ablation", ck["ss_flow"], "--shape-flow-ablation", ck["shape_flow"],
    ])
    result = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON object
    assert result == json.loads(out.read_text())
    assert len(result["chunks"]) == 2 and all(1 <= n <= 8 for n in result["views_per_chunk"])
    r = result["results"]
    assert set(r) == {"ss_vae_roundtrip", "ss_flow", "ss_flow_ablation", "shape_vae_roundtrip", "shape_flow",
                      "shape_flow_ablation", "tex_vae_roundtrip", "tex_flow"}

    for name in ("ss_vae_roundtrip", "ss_flow", "ss_flow_ablation"):
        ious = r[name]["per_chunk"]["iou"]
        assert len(ious) == 2 and all(0.0 <= v <= 1.0 for v in ious)
        summary = r[name]["metrics"]["iou"]
        assert summary["min"] <= summary["mean"] <= summary["max"] and summary["n"] == 2
        # Within one voxel is never stricter than voxel-exact (F >= IoU per chunk).
        f1 = r[name]["per_chunk"]["fscore_1vox"]
        assert len(f1) == 2 and all(f >= iou - 1e-3 for f, iou in zip(f1, ious))
        assert all(f2 >= f - 1e-4 for f2, f in zip(r[name]["per_chunk"]["fscore_2vox"], f1))  # looser, never lower
        # the structure the shape flow receives: occupancy (tiny: 32³) OR-pooled onto the shape latent grid (16³)
        pooled = r[name]["per_chunk"]["iou_16"]
        assert len(pooled) == 2 and all(0.0 <= v <= 1.0 for v in pooled)
        assert f"{name}/iou_16_mean" in result["headline"]
        # infer.py thresholds the logits at -1 (looser than the stage's 0): those IoUs are scored beside
        per = r[name]["per_chunk"]
        assert len(per["iou_t-1"]) == len(per["iou_16_t-1"]) == 2 and f"{name}/iou_t-1_mean" in result["headline"]
        assert per["truth_fraction"] == r["ss_vae_roundtrip"]["per_chunk"]["truth_fraction"]
        assert all(0.0 <= v <= 1.0 for v in per["occupied_fraction"] + per["truth_fraction"])
        # recall split by what the evaluation views see: the seen and hidden recalls weight, by the seen share,
        # to the recall that IoU and precision imply (tp = IoU x |pred ∪ truth|, recall = tp / |truth|)
        assert per["seen_share"] == r["ss_vae_roundtrip"]["per_chunk"]["seen_share"]
        for j in range(2):
            share, rs, rh, prec = (per[k][j] for k in ("seen_share", "recall_seen", "recall_hidden", "precision"))
            assert 0.0 < share <= 1.0
            if prec is None:  # nothing predicted: no recall either
                assert rs == 0.0 and (rh in (None, 0.0))
                continue
            recall = share * rs + (1 - share) * (rh or 0.0)
            iou = per["iou"][j]
            assert iou <= min(prec, recall) + 1e-4
            if iou > 0:  # IoU = 1 / (1/P + 1/R - 1)
                assert abs(1 / (1 / prec + 1 / recall - 1) - iou) < 2e-3
    assert r["ss_flow_ablation"]["per_chunk"] == r["ss_flow"]["per_chunk"]

    for name in ("shape_vae_roundtrip", "shape_flow", "shape_flow_ablation"):
        m, per = r[name]["metrics"], r[name]["per_chunk"]
        assert math.isfinite(m["chamfer_vox"]["mean"]) and m["chamfer_vox"]["mean"] >= 0
        for key in ("fscore", "precision", "recall", "normal_consistency"):
            assert all(0.0 <= v <= 1.0 for v in per[key]), (name, key)
        assert len(per["fscore"]) == 2
    assert r["shape_flow_ablation"]["per_chunk"] == r["shape_flow"]["per_chunk"]

    for name in ("tex_vae_roundtrip", "tex_flow"):
        per = r[name]["per_chunk"]
        psnr = per["psnr_db"]
        assert len(psnr) == 2 and all(math.isfinite(v) and v > 0 for v in psnr)
        # the seen and hidden parts split the same probe points: their MSEs average, by the seen share, to the whole
        for whole, seen, hidden, share in zip(psnr, per["psnr_seen_db"], per["psnr_hidden_db"], per["seen_share"]):
            assert 0.0 < share < 1.0 and seen is not None and hidden is not None
            mse = share * 10 ** (-seen / 10) + (1 - share) * 10 ** (-hidden / 10)
            assert mse == pytest.approx(10 ** (-whole / 10), rel=1e-3)
    assert r["tex_flow"]["per_chunk"]["seen_share"] == r["tex_vae_roundtrip"]["per_chunk"]["seen_share"]

    for name in ("ss_flow", "shape_flow", "tex_flow"):
        assert r[name]["sampler"]["steps"] == 2 and r[name]["sample_seconds"] >= 0
        # the training step each flow was saved at, read from its checkpoint (for learning curves)
        saved = torch.load(ck[name], map_location="cpu", weights_only=True, mmap=True)["global_step"]
        assert r[name]["checkpoint_step"] == saved and saved > 0
    # the stored latents were written by these VAEs, and the flows were trained on these statistics
    assert set(result["latent_check"]) == {"ss", "shape", "tex"}
    assert all(v < 1e-4 for v in result["latent_check"].values())
    assert all(v < 1e-4 for v in result["stats_check"].values())
    # a projection-conditioned checkpoint passed as the ablation is flagged
    assert sum("projection conditioning ON" in w for w in result["warnings"]) == 2
    assert result["device"] == "cpu" and result["timings"]["total_s"] > 0

    with Image.open(figure) as im:
        # one chunk: input-view row + from-above row; input view + 10 rendered columns
        assert im.size == (48 * 11, 2 * (48 + 14))
        assert np.asarray(im).std() > 0


def test_views_are_the_datamodule_validation_choice(tiny_pipeline):
    """Chunk g gets the views ChunkDataModule(eval_views=8, batch_size=1).val_dataloader() gives batch g."""
    root, _ = tiny_pipeline
    _, items = _flow_quality().load_chunks(root / "latents", ["views"], 2, 8, seed=3, samples=10)
    dm = ChunkDataModule(str(root / "latents"), ["views"], batch_size=1, eval_views=8, seed=3, val_batches=2)
    batches = list(dm.val_dataloader())
    assert len(items) == len(batches) == 2
    for item, batch in zip(items, batches, strict=True):
        n = len(item["w2c"])
        assert int(batch["view_mask"][0].sum()) == n
        np.testing.assert_array_equal(batch["w2c"][0, :n].numpy(), item["w2c"])
        np.testing.assert_array_equal(batch["intrinsics"][0, :n].numpy(), item["intrinsics"])


@pytest.mark.parametrize("missing", ["--ss-vae", "--shape-vae"])
def test_a_flow_without_its_decoder_is_skipped_with_a_warning(tiny_pipeline, capsys, missing):
    root, ckpts = tiny_pipeline
    flow = {"--ss-vae": "ss_flow", "--shape-vae": "shape_flow"}[missing]
    result = _flow_quality().main(["--latents", str(root / "latents"), "--max-chunks", "1", "--device", "cpu",
                                   f"--{flow.replace('_', '-')}", str(ckpts / f"{flow}.ckpt")])
    capsys.readouterr()
    assert result["results"] == {} and any(missing in w for w in result["warnings"])


def test_cfg_sweep_scores_each_guidance_strength(tiny_pipeline, tmp_path):
    root, ckpts = tiny_pipeline
    ck = {s: str(ckpts / f"{s}.ckpt") for s in ("ss_vae", "tex_vae", "ss_flow", "tex_flow")}
    result = _flow_quality().main([
        "--latents", str(root / "latents"), "--max-chunks", "2", "--batch-size", "2", "--steps", "2",
        "--samples", "5000", "--device", "cpu", "--cfg-sweep", "1", "3", "--x0-estimate", "--uncond",
        "--x0-average", "2", "--sample-average", "2", "--occ-threshold-sweep", "-1", "0", "1",
        "--ss-vae", ck["ss_vae"], "--tex-vae", ck["tex_vae"], "--ss-flow", ck["ss_flow"], "--tex-flow", ck["tex_flow"],
    ])
    r = result["results"]
    # The texture sampler's own strength is 1.0: the sweep's 1 adds no duplicate entry for it. The SS flow's
    # averages have twins that average the decoded occupancy (pavg).
    assert set(r) == {"ss_vae_roundtrip", "ss_flow", "ss_flow@cfg1", "ss_flow@cfg3", "ss_flow@x0", "ss_flow@x0avg2",
                      "ss_flow@x0pavg2", "ss_flow@avg2", "ss_flow@pavg2",
                      "ss_flow@uncond", "ss_flow@x0_uncond", "tex_vae_roundtrip", "tex_flow", "tex_flow@cfg3",
                      "tex_flow@x0", "tex_flow@x0avg2", "tex_flow@avg2", "tex_flow@uncond", "tex_flow@x0_uncond"}
    assert (r["ss_flow@pavg2"]["steps"], r["ss_flow@pavg2"]["draws"], r["ss_flow@pavg2"]["draw_mean"]) == (2, 2, "occupancy")
    assert (r["ss_flow@x0pavg2"]["steps"], r["ss_flow@x0pavg2"]["draws"]) == (1, 2)
    assert "draw_mean" not in r["ss_flow@x0avg2"] and r["tex_flow@avg2"]["steps"] == 2
    for entry in ("ss_flow@pavg2", "ss_flow@x0pavg2", "ss_flow@avg2"):
        assert all(0.0 <= v <= 1.0 for v in r[entry]["per_chunk"]["iou"])
    # the threshold sweep: the stage's own threshold (0) is the main IoU, the others are extra keys
    metrics = r["ss_flow@pavg2"]["metrics"]
    assert {"iou_t-1", "iou_t1"} <= set(metrics) and "iou_t0" not in metrics
    assert all(0.0 <= v <= 1.0 for k in ("iou_t-1", "iou_t1") for v in r["ss_flow@pavg2"]["per_chunk"][k])
    assert r["tex_flow@x0avg2"]["steps"] == 1 and r["tex_flow@x0avg2"]["draws"] == 2
    assert all(math.isfinite(v) for v in r["tex_flow@x0avg2"]["per_chunk"]["psnr_db"])
    assert r["tex_flow@x0_uncond"]["guidance_strength"] == 0.0 and r["tex_flow@x0_uncond"]["steps"] == 1
    assert all(math.isfinite(v) for v in r["tex_flow@x0_uncond"]["per_chunk"]["psnr_db"])
    assert r["ss_flow"]["guidance_strength"] == 7.5 and r["ss_flow@cfg1"]["guidance_strength"] == 1.0
    assert r["ss_flow"]["steps"] == 2 and r["ss_flow@x0"]["steps"] == 1 and r["tex_flow@x0"]["steps"] == 1
    assert r["tex_flow"]["guidance_strength"] == 1.0 and r["tex_flow@cfg3"]["guidance_strength"] == 3.0
    for name in ("ss_flow@cfg1", "ss_flow@cfg3"):
        assert all(0.0 <= v <= 1.0 for v in r[name]["per_chunk"]["iou"])
    assert all(math.isfinite(v) and v > 0 for v in r["tex_flow@cfg3"]["per_chunk"]["psnr_db"])


def test_fraction_probes_occupy_each_chunks_largest_logits():
    """--occ-fraction-sweep / --occ-fraction-oracle: logits that are all negative score 0 at the threshold, but
    their largest share matches the truth exactly where their ranking is right."""
    from types import SimpleNamespace

    fq = _flow_quality()
    bench = fq.Benchmark.__new__(fq.Benchmark)
    bench.args = SimpleNamespace(infer_occ_threshold=None, occ_threshold_sweep=[], occ_fraction_sweep=[0.25],
                                 occ_fraction_oracle=True)
    bench.structure_resolution = 2
    occ = torch.zeros(2, 1, 4, 4, 4)
    occ[0, 0, 0] = 1.0       # a wall: a quarter of the grid
    occ[1, 0, :2] = 1.0      # half of the grid
    logits = -5.0 + occ      # ranked right, all under 0
    out = bench.occupancy_scores(logits, occ, 0.0)
    assert out["iou"] == [0.0, 0.0]
    assert out["iou_ftruth"] == [1.0, 1.0] and out["iou_2_ftruth"] == [1.0, 1.0]
    assert out["iou_f0.25"] == [1.0, 0.5]
    assert fq.parse_args(["--latents", "x", "--occ-fraction-sweep", "0.07"]).occ_fraction_sweep == [0.07]
    with pytest.raises(SystemExit):
        fq.parse_args(["--latents", "x", "--occ-fraction-sweep", "7"])


def test_sampler_variants_set_the_sampler_while_sampling_and_restore_it():
    from types import SimpleNamespace

    fq = _flow_quality()
    bench = fq.Benchmark.__new__(fq.Benchmark)
    bench.args = SimpleNamespace(cfg_sweep=[1.0, 7.5, 3.0], x0_estimate=True, x0_average=[], sample_average=[], uncond=False)
    stage = SimpleNamespace(sampler=SimpleNamespace(guidance_strength=7.5, steps=12, guidance_interval=(0.6, 1.0)))
    seen = [(entry, settings["guidance_strength"], settings["steps"], stage.sampler.guidance_strength,
             stage.sampler.steps) for entry, settings in bench.sampler_variants("ss_flow", stage)]
    assert seen == [("ss_flow", 7.5, 12, 7.5, 12), ("ss_flow@cfg1", 1.0, 12, 1.0, 12), ("ss_flow@cfg3", 3.0, 12, 3.0, 12),
                    ("ss_flow@x0", 7.5, 1, 7.5, 1)]
    assert stage.sampler.guidance_strength == 7.5 and stage.sampler.steps == 12


def test_x0_average_variants_set_the_samplers_draws_for_one_step_and_restore_them():
    from types import SimpleNamespace

    from genrecon.pipelines.sampler import EulerSampler

    fq = _flow_quality()
    bench = fq.Benchmark.__new__(fq.Benchmark)
    bench.args = SimpleNamespace(cfg_sweep=[], x0_estimate=True, x0_average=[4, 1, 8], sample_average=[], uncond=False)
    stage = SimpleNamespace(sampler=EulerSampler(steps=12, guidance_interval=(0.6, 0.9)))
    seen = {entry: (stage.sampler.steps, stage.sampler.draws)
            for entry, _ in bench.sampler_variants("tex_flow", stage)}
    assert seen == {"tex_flow": (12, 1), "tex_flow@x0": (1, 1), "tex_flow@x0avg4": (1, 4), "tex_flow@x0avg8": (1, 8)}
    assert stage.sampler.steps == 12 and stage.sampler.draws == 1


def test_ss_average_variants_have_occupancy_twins_and_leave_the_sampler_as_it_was():
    from types import SimpleNamespace

    from genrecon.pipelines.sampler import EulerSampler

    fq = _flow_quality()
    bench = fq.Benchmark.__new__(fq.Benchmark)
    bench.args = SimpleNamespace(cfg_sweep=[], x0_estimate=False, x0_average=[4], sample_average=[2], uncond=False)
    stage = SimpleNamespace(sampler=EulerSampler(steps=12))
    seen = {entry: (stage.sampler.steps, stage.sampler.draws, settings.get("draw_mean"))
            for entry, settings in bench.sampler_variants("ss_flow", stage, occupancy=True)}
    assert seen == {"ss_flow": (12, 1, None), "ss_flow@x0avg4": (1, 4, None), "ss_flow@x0pavg4": (1, 4, "occupancy"),
                    "ss_flow@avg2": (12, 2, None), "ss_flow@pavg2": (12, 2, "occupancy")}
    assert not hasattr(stage.sampler, "draw_mean") and (stage.sampler.steps, stage.sampler.draws) == (12, 1)


def test_uncond_variants_sample_without_the_views_and_restore_the_sampler():
    from types import SimpleNamespace

    import torch

    from genrecon.pipelines.sampler import EulerSampler

    fq = _flow_quality()
    bench = fq.Benchmark.__new__(fq.Benchmark)
    bench.args = SimpleNamespace(cfg_sweep=[], x0_estimate=True, x0_average=[], sample_average=[], uncond=True)
    sampler = EulerSampler(steps=12, guidance_strength=1.0, guidance_interval=(0.6, 0.9))
    stage = SimpleNamespace(sampler=sampler)
    seen = {}
    for entry, _ in bench.sampler_variants("tex_flow", stage):
        # Which passes the sampler makes at the start (t = 1) and inside the interval: (cond, zeroed) conditions.
        calls = []
        model = lambda x, t, c2, c3: calls.append(bool(c2.abs().sum() > 0)) or torch.zeros_like(x)  # noqa: E731
        for t in (1.0, 0.7):
            sampler.velocity(model, torch.zeros(2, 3), t, torch.ones(2, 4), torch.ones(5, 4))
        seen[entry] = (sampler.steps, calls)
    assert seen == {"tex_flow": (12, [True, True]), "tex_flow@x0": (1, [True, True]),
                    "tex_flow@uncond": (12, [False, False]), "tex_flow@x0_uncond": (1, [False, False])}
    assert sampler.guidance_strength == 1.0 and sampler.guidance_interval == (0.6, 0.9) and sampler.steps == 12


def test_probe_visibility_sees_the_front_of_a_wall_and_not_its_back():
    """A 4-voxel-thick wall across the chunk, one camera in front of it: probe points on its front face are seen,
    those on the back face are hidden behind it, and without cameras nothing is seen."""
    from types import SimpleNamespace

    fq = _flow_quality()
    r = 32
    xs, ys, zs = np.meshgrid(np.arange(14, 18), np.arange(r), np.arange(r), indexing="ij")
    coords = np.stack([xs.ravel(), ys.ravel(), zs.ravel()], 1)
    rng = np.random.default_rng(0)
    yz = rng.uniform(-0.4, 0.4, size=(200, 2))
    front = np.c_[np.full(200, 18 / r - 0.5), yz]  # the wall's +x face (voxels 14..17 end at x = 18/r)
    back = np.c_[np.full(200, 14 / r - 0.5), yz]
    chunk = SimpleNamespace(resolution=r, vox=SimpleNamespace(coords=coords),
                            colour_probe=lambda: (np.concatenate([front, back]), None))
    w2c, K = fq._look_at(np.array([1.2, 0.1, 0.05]), fov_deg=70.0)
    item = {"w2c": w2c[None].astype(np.float32), "intrinsics": K[None].astype(np.float32)}
    seen = fq.probe_visibility(chunk, item, torch.device("cpu"))
    assert seen[:200].mean() > 0.95 and seen[200:].mean() < 0.05
    assert not fq.probe_visibility(chunk, {"w2c": np.zeros((0, 4, 4))}, torch.device("cpu")).any()


def test_occupancy_visibility_sees_the_front_layer_of_a_wall_and_not_its_back():
    """A 4-voxel-thick wall in a 32³ occupancy grid, one camera in front of its +x face: the front layer is seen, the
    layers 2-3 voxels behind it are hidden, empty voxels are never seen, and without cameras nothing is."""
    fq = _flow_quality()
    r = 32
    occ = torch.zeros(r, r, r)
    occ[14:18] = 1.0
    w2c, K = fq._look_at(np.array([1.2, 0.1, 0.05]), fov_deg=70.0)
    item = {"w2c": w2c[None].astype(np.float32), "intrinsics": K[None].astype(np.float32)}
    seen = fq.occupancy_visibility(occ, item)
    assert seen.shape == occ.shape and not seen[occ == 0].any()
    inner = slice(6, 26)  # away from the grazing edges of the wall
    assert seen[17, inner, inner].float().mean() > 0.95
    assert seen[14:16, inner, inner].float().mean() < 0.05
    assert not fq.occupancy_visibility(occ, {"w2c": np.zeros((0, 4, 4))}).any()


def test_occupancy_scores_split_recall_into_seen_and_hidden_voxels():
    """With a seen mask: precision over the predicted voxels, recall over the seen and the hidden true voxels apart,
    the seen share of the truth, and None for a part that is empty."""
    from types import SimpleNamespace

    fq = _flow_quality()
    bench = fq.Benchmark.__new__(fq.Benchmark)
    bench.args = SimpleNamespace(infer_occ_threshold=None, occ_threshold_sweep=[], occ_fraction_sweep=[],
                                 occ_fraction_oracle=False)
    bench.structure_resolution = 2
    occ = torch.zeros(2, 1, 4, 4, 4)
    occ[:, 0, 0] = 1.0                       # truth: 16 voxels in each chunk
    seen = torch.zeros_like(occ, dtype=torch.bool)
    seen[0, 0, 0, :2] = True                 # chunk 0: 8 seen, 8 hidden; chunk 1: all seen
    seen[1, 0, 0] = True
    logits = torch.full_like(occ, -5.0)
    logits[0, 0, 0, 0] = 5.0                 # 4 seen voxels found
    logits[0, 0, 0, 3, :2] = 5.0             # 2 hidden voxels found
    logits[0, 0, 3, 3] = 5.0                 # 4 false voxels
    logits[1, 0, 0] = 5.0
    out = bench.occupancy_scores(logits, occ, 0.0, seen)
    assert out["precision"] == [0.6, 1.0]
    assert out["recall_seen"] == [0.5, 1.0] and out["recall_hidden"][0] == 0.25 and out["recall_hidden"][1] is None
    assert out["seen_share"] == [0.5, 1.0]
    assert "recall_seen" not in bench.occupancy_scores(logits, occ, 0.0)


def test_a_latent_head_readout_is_decoded_and_scored_like_a_sample(tiny_pipeline, monkeypatch):
    """``tex_flow@head`` decodes whatever the stage's ``latent_head_readout`` returns on the true voxels: a read-out
    of the true latent scores the texture VAE's round trip."""
    fq = _flow_quality()
    root, ckpts = tiny_pipeline
    original = fq.Benchmark.load

    def load(self, path, stage):
        module, seconds = original(self, path, stage)
        if stage == "tex_flow":  # the tiny flow has no head: give it one whose read-out is the true latent
            module.latent_head = torch.nn.Linear(module.model.cond_channels, 32)
            module.latent_head_readout = lambda batch: module.normalise(batch["tex_feats"], 1)
        return module, seconds

    monkeypatch.setattr(fq.Benchmark, "load", load)
    r = fq.main(["--latents", str(root / "latents"), "--max-chunks", "2", "--batch-size", "2", "--steps", "2",
                 "--samples", "5000", "--device", "cpu", "--tex-vae", str(ckpts / "tex_vae.ckpt"),
                 "--tex-flow", str(ckpts / "tex_flow.ckpt")])["results"]
    assert set(r) == {"tex_vae_roundtrip", "tex_flow", "tex_flow@head"}
    assert r["tex_flow@head"]["readout"].startswith("latent head")
    np.testing.assert_allclose(r["tex_flow@head"]["per_chunk"]["psnr_db"],
                               r["tex_vae_roundtrip"]["per_chunk"]["psnr_db"], atol=0.05)
    assert not np.allclose(r["tex_flow"]["per_chunk"]["psnr_db"], r["tex_vae_roundtrip"]["per_chunk"]["psnr_db"],
                           atol=0.05)


def test_saved_occupancy_reproduces_the_scores(tiny_pipeline, tmp_path):
    """--save-occupancy writes the grids each SS entry was scored on: IoU, precision and the seen recall
    recomputed from the file equal the JSON's, and the stored probabilities threshold to the stored voxels."""
    root, ckpts = tiny_pipeline
    fq = _flow_quality()
    out = tmp_path / "flow_quality_x.json"
    result = fq.main(["--latents", str(root / "latents"), "--max-chunks", "2", "--batch-size", "2", "--steps", "2",
                      "--device", "cpu", "--x0-estimate", "--save-occupancy", "--out", str(out),
                      "--ss-vae", str(ckpts / "ss_vae.ckpt"), "--ss-flow", str(ckpts / "ss_flow.ckpt")])
    path = tmp_path / "flow_quality_x_occupancy.npz"
    assert result["occupancy_arrays"] == str(path) and path.is_file()
    data = np.load(path)
    assert list(data["chunks"]) == result["chunks"]
    r = int(data["resolution"])
    unpack = lambda a: np.unpackbits(a, axis=1)[:, : r**3].reshape(-1, r, r, r).astype(bool)  # noqa: E731
    truth, seen = unpack(data["truth"]), unpack(data["seen"])
    assert truth.shape == (2, r, r, r) and truth.any() and not (seen & ~truth).any()
    for entry in ("ss_flow", "ss_flow@x0"):
        pred = unpack(data[f"{entry}.pred"])
        per = result["results"][entry]["per_chunk"]
        for j in range(2):
            union = (pred[j] | truth[j]).sum()
            iou = (pred[j] & truth[j]).sum() / union if union else 1.0
            assert iou == pytest.approx(per["iou"][j], abs=1e-4)
            if pred[j].any():
                assert (pred[j] & truth[j]).sum() / pred[j].sum() == pytest.approx(per["precision"][j], abs=1e-4)
            assert (pred[j] & seen[j]).sum() / seen[j].sum() == pytest.approx(per["recall_seen"][j], abs=1e-4)
        prob = data[f"{entry}.prob"]
        assert prob.dtype == np.uint8 and prob.shape == (2, r, r, r)
        # the stage's logit threshold as a probability: quantisation may flip only voxels next to it
        cut = 255 / (1 + math.exp(-result["results"][entry]["occ_threshold"]))
        near = np.abs(prob.astype(float) - cut) <= 1
        assert ((prob > cut) == pred)[~near].all() and (~near).mean() > 0.5


def test_save_occupancy_needs_an_output_path(tiny_pipeline):
    root, ckpts = tiny_pipeline
    with pytest.raises(SystemExit):
        _flow_quality().main(["--latents", str(root / "latents"), "--save-occupancy",
                              "--ss-vae", str(ckpts / "ss_vae.ckpt")])


def test_split_train_scores_the_first_training_chunks(tiny_pipeline, tmp_path):
    root, ckpts = tiny_pipeline
    fq = _flow_quality()
    common = ["--latents", str(root / "latents"), "--max-chunks", "1", "--batch-size", "1", "--steps", "1",
              "--device", "cpu", "--ss-vae", str(ckpts / "ss_vae.ckpt")]
    train = fq.main([*common, "--split", "train"])
    val = fq.main(common)
    assert train["split"] == "train" and val["split"] == "val"
    with tarfile.open(sorted((root / "latents").glob("train-*.tar"))[0]) as tar:
        first = tar.getmembers()[0].name.split(".")[0]  # the first sample's key
    assert train["chunks"] == [first] and train["chunks"] != val["chunks"]
    assert 0.0 <= train["results"]["ss_vae_roundtrip"]["metrics"]["iou"]["mean"] <= 1.0


def test_point_keep_sets_the_share_of_a_point_depth_flows_points(monkeypatch):
    from types import SimpleNamespace

    from genrecon.models.point_depth import SimulatedPoints

    fq = _flow_quality()
    trained = SimulatedPoints(keep=(0.1, 1.0), eval_keep=0.25, noise=0.3)
    monkeypatch.setattr(fq, "load_stage", lambda path, expected_stage, device: SimpleNamespace(point_depth=trained))
    bench = SimpleNamespace(device=torch.device("cpu"), args=SimpleNamespace(point_keep=0.8))
    module, _ = fq.Benchmark.load(bench, "ss_flow.ckpt", "ss_flow")
    assert module.point_depth == SimulatedPoints(keep=(0.1, 1.0), eval_keep=0.8, noise=0.3)
    bench.args.point_keep = None  # the checkpoint's own share
    assert fq.Benchmark.load(bench, "ss_flow.ckpt", "ss_flow")[0].point_depth.eval_keep == 0.25
    monkeypatch.setattr(fq, "load_stage", lambda path, expected_stage, device: SimpleNamespace())
    bench.args.point_keep = 0.8  # a flow without point depths is left as it is
    assert not hasattr(fq.Benchmark.load(bench, "ss_flow.ckpt", "ss_flow")[0], "point_depth")

    # The result records the points a flow was scored with, presets resolved; a flow without points records none.
    bench.args.point_depth = ["preset=stereo_h2"]
    monkeypatch.setattr(fq, "load_stage", lambda path, expected_stage, device: SimpleNamespace(point_depth=trained))
    scored = fq.Benchmark.load(bench, "ss_flow.ckpt", "ss_flow")[0]
    scored.hparams, scored.latent = {}, "ss"
    scored.sampler = SimpleNamespace(steps=12, guidance_strength=7.5, guidance_rescale=0.7,
                                     guidance_interval=(0.6, 1.0), rescale_t=5.0)
    bench.args.steps, bench.stats, bench.warnings = None, None, []
    meta = fq.Benchmark.flow_meta(bench, "ss_flow", scored, "ss_flow.ckpt", 0.0, False)
    assert meta["point_depth"]["stereo_horizontal"] is True and meta["point_depth"]["stereo_consistent"] == 2
    assert meta["point_depth"]["eval_keep"] == 0.8 and meta["point_depth"]["keep"] == (0.1, 1.0)
    del scored.point_depth
    assert "point_depth" not in fq.Benchmark.flow_meta(bench, "ss_flow", scored, "ss_flow.ckpt", 0.0, False)


def test_point_depth_overrides_score_a_flow_on_other_points():
    from genrecon.models.point_depth import SimulatedPoints

    fq = _flow_quality()
    trained = SimulatedPoints(keep=(0.1, 1.0), eval_keep=0.25)
    scored = fq.point_depth_for_scoring(trained, None, ["source=stereo", "stereo_consistent=1",
                                                        "stereo_refine=true", "stereo_size=128", "keep=0.2,0.9"])
    assert scored == SimulatedPoints(keep=(0.2, 0.9), eval_keep=0.25, source="stereo", stereo_consistent=1,
                                     stereo_refine=True, stereo_size=128)
    assert fq.point_depth_for_scoring(trained, 0.5, []) == SimulatedPoints(keep=(0.1, 1.0), eval_keep=0.5)
    with pytest.raises(ValueError, match="stereo_cnsistent"):
        fq.point_depth_for_scoring(trained, None, ["stereo_cnsistent=1"])
    with pytest.raises(ValueError, match="not a bool"):
        fq.point_depth_for_scoring(trained, None, ["stereo_refine=yes"])
    with pytest.raises(ValueError, match="source"):  # the dataclass's own check of the value
        fq.point_depth_for_scoring(trained, None, ["source=lidar"])
    preset = fq.point_depth_for_scoring(trained, None, ["preset=stereo_h2", "stereo_consistent=1"])
    assert preset == SimulatedPoints(keep=(0.1, 1.0), eval_keep=0.25, **dict(fq.POINT_PRESETS["stereo_h2"],
                                                                              stereo_consistent=1))
    assert preset == fq.point_depth_for_scoring(trained, None, ["preset=stereo_h1"])
    with pytest.raises(ValueError, match="unknown preset"):
        fq.point_depth_for_scoring(trained, None, ["preset=stereo_h9"])


def test_the_first_chunks_score_the_same_when_more_are_scored(tiny_pipeline):
    """compare_quality.py --first relies on it: the chunks, their views and each batch's noise depend on the
    chunk's place and the batch's index, not on how many chunks follow."""
    root, ckpts = tiny_pipeline
    fq = _flow_quality()
    common = ["--latents", str(root / "latents"), "--batch-size", "1", "--steps", "2", "--device", "cpu",
              "--x0-estimate", "--ss-vae", str(ckpts / "ss_vae.ckpt"), "--ss-flow", str(ckpts / "ss_flow.ckpt")]
    one, two = fq.main([*common, "--max-chunks", "1"]), fq.main([*common, "--max-chunks", "2"])
    assert len(two["chunks"]) == 2 and two["chunks"][:1] == one["chunks"]
    for entry in ("ss_flow", "ss_flow@x0"):
        for metric in ("iou", "fscore_1vox"):
            assert two["results"][entry]["per_chunk"][metric][0] == one["results"][entry]["per_chunk"][metric][0]
