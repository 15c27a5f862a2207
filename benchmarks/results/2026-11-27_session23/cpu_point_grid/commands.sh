#!/bin/bash
# CPU study (session 23): does counting the points per occupancy voxel (preset.flow.point_grid) fix the thickness
# of the points-conditioned SS flow? Two arms from scratch on 40 small rooms, 25 minutes each, side by side, the
# reduced model of sessions 17-19 (width 96, 3 blocks), depth cue from simulated points in both.
set -e
cd /work/main
PY=/work/venv/bin/python
D=/tmp/loc40
[ -d $D/data/synthetic_small/shards ] || $PY prepare.py preset=small paths.data_dir=$D/data paths.log_dir=$D/logs dataset.num_scenes=40 dataset.val_fraction=0.1 num_workers=2 render.scale=1 render.max_cameras=32 > $D/prepare.log 2>&1
COMMON="preset=small paths.data_dir=$D/data paths.log_dir=$D/logs hardware=cpu logger=csv stage.max_steps=10000000 stage.datamodule.num_workers=0 +stage.datamodule.batches_per_epoch=500 +trainer.enable_progress_bar=false callbacks.progress_bar=null callbacks.model_summary=null +callbacks.time_budget._target_=callbacks.time_budget.TimeBudgetDecay"
# the reduced SS-VAE of sessions 17-19 (the small preset's is too slow on 2 cores: 3 steps in 6 minutes)
GENRECON_RUN_NAME=ss_vae $PY train.py stage=ss_vae $COMMON +trainer.max_time=00:00:08:00 stage.checkpoint_every_n_steps=500 stage.val_every_n_steps=200 stage.val_batches=2 stage.datamodule.batch_size=4 "preset.ss_vae.channels=[8,16,32]" preset.ss_vae.num_res_blocks=1 preset.ss_vae.num_res_blocks_middle=1 stage.module.lr=2e-3 > $D/ss_vae.log 2>&1
$PY prepare.py steps=[encode] preset=small paths.data_dir=$D/data paths.log_dir=$D/logs encode.ss_vae_ckpt=$D/logs/train/runs/ss_vae/checkpoints/last.ckpt > $D/encode.log 2>&1
FLOW="$COMMON +trainer.max_time=00:00:25:00 stage.checkpoint_every_n_steps=500 stage.val_every_n_steps=250 stage.val_batches=2 stage.datamodule.batch_size=2 preset.flow.width=96 preset.flow.num_blocks=3 preset.flow.num_heads=4 preset.flow.cond_channels=96 preset.image_encoder.depth=2 preset.image_encoder.num_heads=4 stage.datamodule.max_views=8 stage.module.lr=1e-3 stage.module.lr_new=1e-3 stage.module.warmup_steps=50 stage.module.ema_decay=0.99 stage.module.ema_warmup=true stage.module.occupancy_aux_weight=1.0 stage.module.sample_batches=1 stage.module.sampler.steps=4 stage.module.objective.p_endpoint=0.1 stage.module.ss_vae_ckpt=$D/logs/train/runs/ss_vae/checkpoints/last.ckpt preset.flow.depth_cue={bins:64,max_depth:4.0} stage.module.point_depth={keep:[0.05,1.0],eval_keep:0.25}"
OMP_NUM_THREADS=1 GENRECON_RUN_NAME=ss_points $PY train.py stage=ss_flow $FLOW > $D/ss_points.log 2>&1 &
OMP_NUM_THREADS=1 GENRECON_RUN_NAME=ss_pgrid $PY train.py stage=ss_flow $FLOW preset.flow.point_grid={subdivisions:4} > $D/ss_pgrid.log 2>&1 &
wait
for run in ss_points ss_pgrid; do
  $PY benchmarks/flow_quality.py --latents $D/data/synthetic_small/latents --ss-vae $D/logs/train/runs/ss_vae/checkpoints/last.ckpt --ss-flow $D/logs/train/runs/$run/checkpoints/last.ckpt --max-chunks 12 --batch-size 4 --device cpu --x0-estimate --x0-average 16 --save-occupancy --out $D/fq_$run.json
done
echo DONE
