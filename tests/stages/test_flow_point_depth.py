"""``point_depth`` (a deviation, off): the SS flow's depth cue takes its depths from points, simulated from the
chunk's occupancy in training and validation."""

from __future__ import annotations

import pytest
import torch

from genrecon.models.depth_cue import histogram_logits
from genrecon.stages.flow import SparseStructureFlowStage
from tests.stages.test_flow_depth_supervision import CUE
from tests.stages.test_flow_depth_supervision import _stage as supervised_stage
from tests.stages.test_flow_occupancy_aux import _batch

EXACT = {"keep": [1.0, 1.0], "eval_keep": 1.0, "noise": 0.0, "tolerance": 1.5}


def _stage(point_depth: dict | None = EXACT, **kwargs) -> SparseStructureFlowStage:
    return supervised_stage(weight=0.0, point_depth=point_depth, **kwargs)


def test_every_seen_point_gives_the_oracles_depths() -> None:
    """With all seen voxels kept and no jitter, the points' patch depths are the oracle's (only seen voxels can
    be a cell's nearest); patches no point reaches keep the head's estimate."""
    batch = _batch()
    stage = _stage().eval()
    tokens = stage._prepare(batch)[0]
    points, idx = stage.simulated_points(batch, 2)
    all_points, _ = stage.surface_points(batch)
    assert 0 < len(points) < len(all_points)  # some voxels are hidden behind others
    logits = stage.model.point_depth_logits(tokens, points, idx, batch["w2c"], batch["intrinsics"],
                                            batch["view_mask"], 2)
    target, has = stage.surface_depth_targets(batch, 2)
    torch.testing.assert_close(logits[has], histogram_logits(target, has)[has])


def test_conditioning_follows_the_points_is_fixed_in_evaluation_and_drawn_in_training() -> None:
    batch = _batch()
    stage = _stage({"keep": [0.05, 0.5], "eval_keep": 0.5, "noise": 0.5}).eval()
    torch.nn.init.normal_(stage.model.depth_cue.to_feature.weight)  # open the cue's zero-initialised injection
    tokens = stage._prepare(batch)[0]
    cond = stage.flow_inputs(batch, tokens)["cond_3d"]
    torch.testing.assert_close(stage.flow_inputs(batch, tokens)["cond_3d"], cond)  # evaluation: seed 0
    moved = dict(batch, occupancy=batch["occupancy"].flip(-1))
    assert not torch.allclose(stage.flow_inputs(moved, tokens)["cond_3d"], cond)
    stage.train()
    torch.manual_seed(3)
    first = stage.flow_inputs(batch, tokens)["cond_3d"]
    assert not torch.allclose(stage.flow_inputs(batch, tokens)["cond_3d"], first)  # another draw of points
    # Off, the occupancy is not read.
    plain = _stage(None).eval()
    plain.load_state_dict(stage.state_dict())
    ref = plain.flow_inputs(batch, tokens)["cond_3d"]
    torch.testing.assert_close(plain.flow_inputs(moved, tokens)["cond_3d"], ref)


def test_training_reaches_every_trainable_parameter_and_sampling_runs() -> None:
    batch = _batch()
    stage = _stage({"keep": [0.1, 1.0]})
    stage.log = stage.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    loss = stage.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    # The head still estimates where no point lands: it stays trainable and in the graph (DDP).
    assert all(p.requires_grad for p in stage.model.depth_cue.head.parameters())
    assert [n for n, p in stage.named_parameters() if p.requires_grad and p.grad is None] == []
    with torch.no_grad():
        assert stage.eval().sample(batch, seed=0).shape == batch["ss_latent"].shape


def test_point_depth_needs_the_depth_cue_and_excludes_the_oracle() -> None:
    with pytest.raises(ValueError, match="depth_cue"):
        _stage(depth_cue=None)
    with pytest.raises(ValueError, match="choose one"):
        _stage(depth_cue=CUE, depth_cue_oracle=True)
    with pytest.raises(ValueError, match="keep"):
        _stage({"keep": [0.5, 0.1]})


def _stereo_batch() -> dict:
    """Four textured views of a sphere before a wall (tests.geometry.test_stereo), at the stage's 32 px."""
    from tests.geometry.test_stereo import _render

    images, (w2c, K, mask), _ = _render()
    gen = torch.Generator().manual_seed(0)
    return {"views": torch.nn.functional.interpolate(images[0], size=(32, 32), mode="area")[None],
            "w2c": w2c, "intrinsics": K, "view_mask": mask, "view_counts": [4],
            "ss_latent": torch.randn(1, 8, 4, 4, 4, generator=gen), "keys": ["sphere"]}


def test_stereo_points_come_from_the_views_alone_and_train_every_parameter() -> None:
    batch = _stereo_batch()  # no occupancy: the stereo source never reads it
    stage = _stage({"source": "stereo", "stereo_size": 32, "stereo_depths": 48, "stereo_min_score": 0.8}).eval()
    points, idx = stage.stereo_points(batch)
    assert len(points) > 100 and (idx == 0).all()
    to_sphere, to_wall = (points.norm(dim=-1) - 0.5).abs(), (points[:, 1] - 1.2).abs()
    assert (torch.minimum(to_sphere, to_wall) < 0.2).float().mean() > 0.7
    torch.nn.init.normal_(stage.model.depth_cue.to_feature.weight)  # open the cue's zero-initialised injection
    tokens = stage._prepare(batch)[0]
    cond = stage.flow_inputs(batch, tokens)["cond_3d"]
    plain = _stage(None).eval()
    plain.load_state_dict(stage.state_dict())
    assert not torch.allclose(plain.flow_inputs(batch, tokens)["cond_3d"], cond)
    stage.train()
    stage.log = stage.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    stage.training_step(batch, 0).backward()
    assert [n for n, p in stage.named_parameters() if p.requires_grad and p.grad is None] == []
    with pytest.raises(ValueError, match="source"):
        _stage({"source": "lidar"})
    # Confirmed by another view, fewer points remain.
    strict = _stage({"source": "stereo", "stereo_size": 32, "stereo_depths": 48, "stereo_min_score": 0.8,
                     "stereo_refine": True, "stereo_consistent": 1}).eval()
    kept, _ = strict.stereo_points(batch)
    assert 0 < len(kept) < len(points)
    with pytest.raises(ValueError, match="stereo_consistent"):
        _stage({"source": "stereo", "stereo_consistent": 5})


def test_mixed_points_take_stereo_for_a_share_of_a_training_batch_and_for_all_in_evaluation(monkeypatch) -> None:
    batch = _batch()
    stage = _stage({"keep": [1.0, 1.0], "eval_keep": 1.0, "noise": 0.0, "source": "mixed", "stereo_share": 0.5})
    calls = []

    def fake_stereo(part: dict) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(part["views"].shape[0])
        b = part["views"].shape[0]
        return torch.full((3 * b, 3), 0.25), torch.arange(b).repeat_interleave(3)

    monkeypatch.setattr(stage, "stereo_points", fake_stereo)
    stage.train()
    points, idx = stage.simulated_points(batch, 2)
    simulated, sim_idx = stage.occupancy_points(batch, 2)
    assert calls == [1]  # a share of 0.5 of two chunks: the first one
    assert torch.equal(idx[:3], torch.zeros(3, dtype=torch.long)) and torch.equal(points[:3], torch.full((3, 3), 0.25))
    torch.testing.assert_close(points[3:], simulated[sim_idx == 1])  # the second chunk: its simulated points
    assert (idx[3:] == 1).all()
    stage.eval()
    points, idx = stage.simulated_points(batch, 2)
    assert calls[-1] == 2 and len(points) == 6  # evaluation: every chunk's points from its views
    with pytest.raises(ValueError, match="stereo_share"):
        _stage({"source": "mixed", "stereo_share": 0.0})


def test_no_points_condition_as_the_views_alone_do() -> None:
    """``source: none`` (scoring a point-trained flow on its views alone): no points, no occupancy read, and the
    depth cue keeps its head's estimate everywhere, so the condition is that of the same weights without
    point_depth."""
    batch = _batch()
    stage = _stage({"keep": [0.05, 1.0], "source": "none"}).eval()
    torch.nn.init.normal_(stage.model.depth_cue.to_feature.weight)  # open the cue's zero-initialised injection
    tokens = stage._prepare(batch)[0]
    points, idx = stage.simulated_points({k: v for k, v in batch.items() if k != "occupancy"}, 2)
    assert points.shape == (0, 3) and idx.shape == (0,)
    plain = _stage(None).eval()
    plain.load_state_dict(stage.state_dict())
    views_only = plain.flow_inputs(batch, tokens)["cond_3d"]
    torch.testing.assert_close(stage.flow_inputs(batch, tokens)["cond_3d"], views_only)
    simulated = _stage({"keep": [0.05, 1.0]}).eval()
    simulated.load_state_dict(stage.state_dict())
    assert not torch.allclose(simulated.flow_inputs(batch, tokens)["cond_3d"], views_only)


def test_evaluation_sweeps_a_batch_once_and_training_every_time(monkeypatch) -> None:
    import genrecon.stages.flow as flow_module

    batch = _stereo_batch()
    stage = _stage({"source": "stereo", "stereo_size": 32, "stereo_depths": 48, "stereo_min_score": 0.8}).eval()
    calls = []
    real = flow_module.stereo_points_of_views
    monkeypatch.setattr(flow_module, "stereo_points_of_views", lambda *a: calls.append(1) or real(*a))
    first = stage.stereo_points(batch)
    again = stage.stereo_points(dict(batch, views=batch["views"].clone()))  # the same views, collated anew
    assert len(calls) == 1 and again[0] is first[0]
    other = dict(batch, views=batch["views"].flip(-1))  # another batch: swept, and both stay kept
    flipped = stage.stereo_points(other)
    assert len(calls) == 2 and not torch.equal(flipped[0], first[0])
    assert stage.stereo_points(batch)[0] is first[0] and stage.stereo_points(other)[0] is flipped[0]
    assert len(calls) == 2
    batch["views"].mul_(0.5)  # changed in place: swept anew
    stage.stereo_points(batch)
    assert len(calls) == 3
    moved = dict(other, w2c=other["w2c"].clone())
    moved["w2c"][..., 0, 3] += 0.1  # other cameras: swept anew
    stage.stereo_points(moved)
    assert len(calls) == 4
    for k in range(flow_module.STEREO_CACHE_BATCHES):  # only the last batches are kept
        stage.stereo_points(dict(batch, views=batch["views"] * (0.9 - 0.05 * k)))
    stage.stereo_points(other)
    assert len(calls) == 5 + flow_module.STEREO_CACHE_BATCHES
    stage.train()
    stage.stereo_points(other)
    stage.stereo_points(other)
    assert len(calls) == 7 + flow_module.STEREO_CACHE_BATCHES  # training never reuses points


def test_block_keep_leaves_whole_blocks_without_points_in_training_only() -> None:
    batch = _batch()
    exact, _ = _stage().eval().simulated_points(batch, 2)
    stage = _stage(dict(EXACT, block_keep=0.0, block_size=2))
    assert stage.point_depth.block_keep == 0.0
    torch.testing.assert_close(stage.eval().simulated_points(batch, 2)[0], exact)  # evaluation keeps every block
    stage.train()
    counts = [len(stage.simulated_points(batch, 2)[0]) for _ in range(8)]
    assert all(c <= len(exact) for c in counts) and min(counts) < len(exact) and len(set(counts)) > 1


def test_stereo_oracle_points_lie_on_the_true_surface_where_stereo_finds_points() -> None:
    """``source: stereo_oracle`` (a diagnostic): the stereo points, each moved onto the nearest occupied voxel
    within one voxel of it (or dropped), so the points have stereo's coverage and the truth's positions."""
    batch = _stereo_batch()
    config = {"stereo_size": 32, "stereo_depths": 48, "stereo_min_score": 0.8}
    stereo, _ = _stage({"source": "stereo", **config}).eval().stereo_points(batch)
    r = 16
    centres = (torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).float() + 0.5) / r - 0.5
    shell = ((centres.norm(dim=-1) - 0.45).abs() < 1.0 / r).float()  # the sphere's surface voxels
    stage = _stage({"source": "stereo_oracle", **config}).eval()
    points, idx = stage.simulated_points(dict(batch, occupancy=shell[None, None]), 1)
    assert 0 < len(points) <= len(stereo) and (idx == 0).all()
    cell = ((points + 0.5) * r).floor().long()
    assert (shell[cell[:, 0], cell[:, 1], cell[:, 2]] == 1).all()  # occupied voxels' centres
    torch.testing.assert_close(points, (cell.float() + 0.5) / r - 0.5)
    nearest = torch.cdist(points, stereo).min(dim=1).values
    assert (nearest <= 3**0.5 * 1.5 / r).all()  # each from a stereo point at most a voxel away
    with pytest.raises(KeyError, match="occupancy"):
        stage.simulated_points(batch, 1)
