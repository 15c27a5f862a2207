"""The flow stages: encode step -> latent shards -> train.py stage=*_flow; the losses fall."""

import json

import numpy as np
import pytest
import torch
import webdataset as wds

from genrecon.data.shards import decode_chunk_sample, shard_urls
from genrecon.utils.test_size import TINY_FLOW_OVERRIDES
from tests.conftest import TINY_MODEL_OVERRIDES
from tests.stages.helpers import head_tail_ratio, run_train

FLOW_OVERRIDES = TINY_MODEL_OVERRIDES + ["stage.max_steps=120", "stage.val_every_n_steps=120"] + TINY_FLOW_OVERRIDES


def test_encode_step_writes_latents_and_statistics(tiny_latents):
    latents = tiny_latents / "latents"
    stats = json.loads((latents / "stats.json").read_text())
    assert len(stats["ss"]["mean"]) == 8 and all(s > 0 for s in stats["ss"]["std"])
    assert len(stats["shape"]["mean"]) == 32 and len(stats["tex"]["std"]) == 32
    raw = next(iter(wds.DataPipeline(wds.SimpleShardList(shard_urls(latents, "train")), wds.tarfile_to_samples())))
    sample = decode_chunk_sample(raw)
    assert sample.latents["ss_latent"].shape == (8, 8, 8, 8)
    coords, feats, tex = (sample.latents[k] for k in ("shape_coords", "shape_feats", "tex_feats"))
    assert coords.shape[1] == 3 and feats.shape == (len(coords), 32) and tex.shape == feats.shape
    assert coords.max() < 8  # 32³ O-Voxel / 4
    assert sample.views.shape[0] == sample.meta["num_views"]  # the chunk's other members are kept


def test_a_std_floor_keeps_near_constant_latent_channels_small_and_round_trips(tmp_path):
    """The texture latents' pattern: a few live channels and many near-constant ones. Per-channel statistics scale
    the near-constant ones up to unit variance; with a floor they stay small and the live ones are unchanged."""
    from genrecon.stages.flow import load_latent_stats

    rng = np.random.default_rng(0)
    std = np.array([0.4, 0.5, 0.2] + [0.004] * 5)
    latents = rng.normal(0.3, 1.0, size=(20000, 8)) * std
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"tex": {"mean": latents.mean(0).tolist(), "std": latents.std(0).tolist()}}))
    x = torch.from_numpy(latents).float()
    for floor, quiet_std in ((0.0, 1.0), (0.1, 0.004 / 0.05)):
        mean, scale = load_latent_stats(path, "tex", 8, std_floor=floor)
        z = (x - mean) / scale
        np.testing.assert_allclose(z.std(0)[:3].numpy(), 1.0, rtol=0.02)  # live channels: unit variance either way
        np.testing.assert_allclose(z.std(0)[3:].numpy(), quiet_std, rtol=0.05)
        torch.testing.assert_close(z * scale + mean, x, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="floor"):
        load_latent_stats(path, "tex", 8, std_floor=1.0)


def test_the_texture_flow_built_from_config_normalises_with_the_floor(tiny_latents, tmp_path):
    import hydra

    from tests.conftest import compose_config

    stats = json.loads((tiny_latents / "latents" / "stats.json").read_text())["tex"]
    built = {}
    for floor in (0.0, 0.5):
        cfg = compose_config("train", TINY_MODEL_OVERRIDES + [
            "stage=tex_flow", "hardware=cpu", f"dataset.root={tiny_latents}", f"paths.output_dir={tmp_path}",
            f"stage.module.latent_std_floor={floor}"])
        built[floor] = hydra.utils.instantiate(cfg.stage.module).latent_std
    np.testing.assert_allclose(built[0.0].numpy(), np.maximum(stats["std"], 1e-6), rtol=1e-6)
    np.testing.assert_allclose(built[0.5].numpy(), np.maximum(stats["std"], 0.5 * max(stats["std"])), rtol=1e-6)


@pytest.mark.parametrize("stage,ratio", [("ss_flow", 0.7), ("shape_flow", 0.8), ("tex_flow", 0.8)])
def test_flow_loss_falls(tiny_latents, tmp_path, stage, ratio):
    torch.manual_seed(0)
    metrics, series = run_train([f"stage={stage}", *FLOW_OVERRIDES], tiny_latents, tmp_path)
    loss = series["train/loss"]
    assert len(loss) == 120
    assert head_tail_ratio(loss, k=20) < ratio, (np.mean(loss[:20]), np.mean(loss[-20:]))
    assert np.isfinite(metrics["val/loss"])


def test_ss_flow_scores_samples_with_a_vae_it_does_not_save(tiny_pipeline, tmp_path):
    """With ``ss_vae_ckpt`` validation logs the sampled occupancy IoU; the frozen decoder stays out of the
    checkpoint, so inference (which never gets ``ss_vae_ckpt``) loads it strictly."""
    from genrecon.stages.loading import load_stage
    from genrecon.tasks.train import train
    from tests.conftest import PIPELINE_DATA, compose_config

    root, ckpts = tiny_pipeline
    cfg = compose_config("train", PIPELINE_DATA + [
        "stage=ss_flow", "hardware=cpu", "logger=none", "stage.max_steps=2", "stage.val_every_n_steps=2",
        "stage.val_batches=1", "stage.datamodule.batch_size=2", "stage.checkpoint_every_n_steps=2",
        "callbacks.model_summary=null", "callbacks.lr_monitor=null", "callbacks.progress_bar=null",
        "stage.module.sample_batches=1", "stage.module.sampler.steps=2", f"stage.module.ss_vae_ckpt={ckpts / 'ss_vae.ckpt'}",
        f"dataset.root={root}", f"paths.output_dir={tmp_path}",
    ])
    metrics = train(cfg)
    assert 0.0 <= metrics["val/sample_iou"] <= 1.0 and 0.0 <= metrics["val/x0_iou"] <= 1.0
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not [k for k in saved["state_dict"] if "ss_decoder" in k]
    loaded = load_stage(tmp_path / "checkpoints" / "last.ckpt", expected_stage="ss_flow")
    assert loaded.ss_decoder is None
    assert loaded.checkpoint_step == saved["global_step"] == 2  # the step the weights were saved at


def test_ss_draws_are_averaged_as_latents_or_as_decoded_occupancy(tiny_pipeline):
    """``sample_occupancy`` with K draws: ``"latent"`` decodes the mean of the K sampled latents, ``"occupancy"``
    is the logit of the mean of their K decoded probabilities; both from the same K successive noises, and with
    one draw the two are the same single sample."""
    from datamodules.chunks import ChunkDataModule
    from genrecon.pipelines.sampler import occupancy_logit
    from genrecon.stages.loading import load_stage

    root, ckpts = tiny_pipeline
    stage = load_stage(ckpts / "ss_flow.ckpt", expected_stage="ss_flow", device="cpu")
    decoder = load_stage(ckpts / "ss_vae.ckpt", expected_stage="ss_vae", device="cpu").decoder
    dm = ChunkDataModule(str(root / "latents"), ["views", "ss_latent"], batch_size=2, eval_views=4, seed=0,
                         val_batches=1)
    batch = next(iter(dm.val_dataloader()))
    stage.sampler.steps, stage.sampler.draws = 2, 3
    draws, sample = [], stage.sampler.sample

    def recording(*args, **kwargs):
        draws.append(sample(*args, **kwargs))
        return draws[-1]

    stage.sampler.sample = recording
    by_latent = stage.sample_occupancy(batch, decoder, seed=5, draw_mean="latent")
    latent_draws, draws[:] = list(draws), []
    by_occupancy = stage.sample_occupancy(batch, decoder, seed=5, draw_mean="occupancy")
    assert len(latent_draws) == len(draws) == 3
    for a, b in zip(latent_draws, draws, strict=True):
        torch.testing.assert_close(a, b)  # the same noises
    assert len({round(float(d.abs().sum()), 3) for d in draws}) == 3  # three different samples

    def decode(z):
        return decoder(stage.denormalise(z, 1))

    torch.testing.assert_close(by_latent, decode(torch.stack(draws).mean(0)), atol=1e-5, rtol=1e-4)
    mean_p = torch.stack([torch.sigmoid(decode(z)) for z in draws]).mean(0)
    torch.testing.assert_close(by_occupancy, occupancy_logit(mean_p), atol=1e-4, rtol=1e-4)
    assert (by_latent - by_occupancy).abs().max() > 1e-3  # two different estimates
    stage.sampler.draws = 1
    torch.testing.assert_close(stage.sample_occupancy(batch, decoder, seed=5, draw_mean="occupancy"),
                               decode(draws[0]), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="draw_mean"):
        stage.sample_occupancy(batch, decoder, draw_mean="median")


@pytest.mark.parametrize("stage", ["ss_flow", "tex_flow"])
def test_flows_with_the_photo_cue_train_and_reload(tiny_latents, tmp_path, stage):
    """The photo-consistency variant trains (its loss falls like the plain one's), its cue gets gradients, and
    the checkpoint rebuilds strictly from the file alone (inference never sees the override)."""
    from genrecon.stages.loading import load_stage

    torch.manual_seed(0)
    overrides = [o.replace("stage.max_steps=120", "stage.max_steps=50") for o in FLOW_OVERRIDES]
    _, series = run_train([f"stage={stage}", "preset.flow.photo_cue={subdivisions:2,hidden:32}",
               "++trainer.enable_checkpointing=true", "callbacks=default", "callbacks.progress_bar=null",
               "callbacks.model_summary=null", "stage.checkpoint_every_n_steps=50", *overrides],
              tiny_latents, tmp_path)
    loss = series["train/loss"]
    assert len(loss) == 50 and head_tail_ratio(loss, k=10) < 0.85, (np.mean(loss[:10]), np.mean(loss[-10:]))
    ckpt = next((tmp_path / "checkpoints").glob("last*.ckpt"))
    module = load_stage(ckpt, expected_stage=stage, device="cpu")
    cue = module.model.photo_cue
    assert cue is not None and cue.subdivisions == 2
    first = module.model.proj_linears[0].weight
    assert cue.mlp[0].weight.abs().sum() > 0 and first.abs().sum() > 0  # both trained away from zero init


def test_ss_flow_with_the_depth_cue_and_aux_heads_trains_and_reloads(tiny_latents, tmp_path):
    """The ray-depth cue, its depth supervision and both auxiliary heads (all deviations, off by default) train
    through train.py: the flow loss and the depth term fall, the aux terms are logged, the cue leaves its zero start, and the checkpoint rebuilds
    strictly from the file alone."""
    from genrecon.stages.loading import load_stage

    torch.manual_seed(0)
    overrides = [o.replace("stage.max_steps=120", "stage.max_steps=50") for o in FLOW_OVERRIDES]
    metrics, series = run_train([
        "stage=ss_flow", "preset.flow.depth_cue={bins:16,max_depth:4.0}", "stage.module.occupancy_aux_weight=1.0",
        "stage.module.latent_aux_weight=1.0", "stage.module.depth_supervision_weight=1.0",
        "++trainer.enable_checkpointing=true", "callbacks=default",
        "callbacks.progress_bar=null", "callbacks.model_summary=null", "stage.checkpoint_every_n_steps=50",
        *overrides, "stage.val_every_n_steps=50"], tiny_latents, tmp_path)
    loss = series["train/loss"]
    assert len(loss) == 50 and head_tail_ratio(loss, k=10) < 0.9, (np.mean(loss[:10]), np.mean(loss[-10:]))
    assert len(series["train/occ_aux"]) == 50 and len(series["train/latent_aux"]) == 50
    depth = series["train/depth_aux"]  # the cue's depth head learns the chunks' surface depths
    assert len(depth) == 50 and head_tail_ratio(depth, k=10) < 0.8, (np.mean(depth[:10]), np.mean(depth[-10:]))
    assert 0.0 <= metrics["val/occ_aux_iou"] <= 1.0 and np.isfinite(metrics["val/latent_aux_r2"])
    assert 0.0 < metrics["val/depth_aux_hit"] <= 1.0
    module = load_stage(next((tmp_path / "checkpoints").glob("last*.ckpt")), expected_stage="ss_flow", device="cpu")
    assert module.model.depth_cue is not None and module.model.depth_cue.bins == 16
    assert module.model.depth_cue.to_feature.weight.abs().sum() > 0
    assert module.occupancy_head is not None and module.latent_head is not None


def test_ss_flow_symmetry_augment_turns_chunks_and_re_encodes_their_latents(tiny_pipeline, tmp_path):
    """The stage re-encodes a turned chunk with the encode step's own function (the stored latent of an
    unturned chunk is reproduced), draws the same elements at the same step, and trains with it."""
    import hydra

    from datamodules.chunks import ChunkDataModule
    from genrecon.geometry.chunk_symmetry import transform_grid
    from genrecon.tasks.train import train
    from tests.conftest import PIPELINE_DATA, compose_config

    root, ckpts = tiny_pipeline
    overrides = PIPELINE_DATA + [
        "stage=ss_flow", "hardware=cpu", "logger=none", "stage.max_steps=2", "stage.val_every_n_steps=2",
        "stage.val_batches=1", "stage.datamodule.batch_size=4", "callbacks.model_summary=null",
        "callbacks.lr_monitor=null", "callbacks.progress_bar=null", "stage.module.sample_batches=1",
        "stage.module.sampler.steps=2", f"stage.module.ss_vae_ckpt={ckpts / 'ss_vae.ckpt'}",
        "stage.module.symmetry_augment=true", f"dataset.root={root}", f"paths.output_dir={tmp_path}",
    ]
    cfg = compose_config("train", overrides)
    stage = hydra.utils.instantiate(cfg.stage.module)
    dm = ChunkDataModule(str(root / "latents"), ["views", "ss_latent", "occupancy"], batch_size=4, eval_views=4,
                         seed=0, val_batches=1)
    batch = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(stage.encode_occupancy(batch["occupancy"]), batch["ss_latent"], atol=1e-5, rtol=1e-5)
    out = stage.augment(batch)
    assert torch.equal(stage.augment(batch)["w2c"], out["w2c"])  # the same step draws the same elements
    changed = [i for i in range(4) if not torch.equal(out["occupancy"][i], batch["occupancy"][i])]
    assert changed, "four chunks all drew the identity"
    for i in changed:
        element = next((t, m) for t in range(4) for m in (False, True)
                       if torch.equal(transform_grid(batch["occupancy"][i], t, m), out["occupancy"][i]))
        assert element != (0, False)
        torch.testing.assert_close(out["ss_latent"][i], stage.encode_occupancy(out["occupancy"][i:i + 1])[0])
    # trains (the encoder stays out of the checkpoint, as the decoder does)
    metrics = train(compose_config("train", overrides))
    assert np.isfinite(metrics["train/loss"])
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not [k for k in saved["state_dict"] if "ss_encoder" in k or "ss_decoder" in k]
