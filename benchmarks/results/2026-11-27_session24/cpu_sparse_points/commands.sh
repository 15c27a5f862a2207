#!/bin/bash
# CPU study (session 24), on session 23's 40 small rooms and reduced SS-VAE (cpu_point_grid/commands.sh of session
# 23 makes them, and its ss_pgrid arm: simulated points keep log-uniform [0.05, 1] + point grid).
# 1. Session 23's ss_pgrid scored with the stereo points of the 8 evaluation views (views only) or none.
# 2. Two new arms side by side, 25 minutes each: views only (the recipe, reduced) and simulated points with keep
#    log-uniform [0.005, 1] + point grid; the latter scored with simulated (0.25), stereo and no points.
set -e
cd /work/main
PY=/work/venv/bin/python
D=/tmp/loc40
FLOW="preset=small paths.data_dir=/tmp/loc40/data paths.log_dir=/tmp/loc40/logs hardware=cpu logger=csv stage.max_steps=10000000 stage.datamodule.num_workers=0 +stage.datamodule.batches_per_epoch=500 +trainer.enable_progress_bar=false callbacks.progress_bar=null callbacks.model_summary=null +callbacks.time_budget._target_=callbacks.time_budget.TimeBudgetDecay +trainer.max_time=00:00:25:00 stage.checkpoint_every_n_steps=500 stage.val_every_n_steps=250 stage.val_batches=2 stage.datamodule.batch_size=2 preset.flow.width=96 preset.flow.num_blocks=3 preset.flow.num_heads=4 preset.flow.cond_channels=96 preset.image_encoder.depth=2 preset.image_encoder.num_heads=4 stage.datamodule.max_views=8 stage.module.lr=1e-3 stage.module.lr_new=1e-3 stage.module.warmup_steps=50 stage.module.ema_decay=0.99 stage.module.ema_warmup=true stage.module.occupancy_aux_weight=1.0 stage.module.sample_batches=1 stage.module.sampler.steps=4 stage.module.objective.p_endpoint=0.1 stage.module.ss_vae_ckpt=/tmp/loc40/logs/train/runs/ss_vae/checkpoints/last.ckpt preset.flow.depth_cue={bins:64,max_depth:4.0}"
OMP_NUM_THREADS=1 GENRECON_RUN_NAME=ss_pgrid_vsparse $PY train.py stage=ss_flow $FLOW "stage.module.point_depth={keep:[0.005,1.0],eval_keep:0.25}" preset.flow.point_grid={subdivisions:4} > $D/ss_pgrid_vsparse.log 2>&1 &
OMP_NUM_THREADS=1 GENRECON_RUN_NAME=ss_views $PY train.py stage=ss_flow $FLOW > $D/ss_views.log 2>&1 &
wait
STEREO="--point-depth=source=stereo --point-depth=stereo_refine=true --point-depth=stereo_consistent=1"
NONE="--point-depth=source=stereo --point-depth=stereo_min_score=2"  # no pixel reaches 2: no points
fq() { name=$1; run=$2; shift 2
  $PY benchmarks/flow_quality.py --latents $D/data/synthetic_small/latents --ss-vae $D/logs/train/runs/ss_vae/checkpoints/last.ckpt --ss-flow $D/logs/train/runs/$run/checkpoints/last.ckpt --max-chunks 12 --batch-size 4 --device cpu --x0-estimate --x0-average 16 --save-occupancy "$@" --out $D/fq_$name.json; }
fq ss_pgrid_stereo ss_pgrid $STEREO
fq ss_pgrid_stereo0 ss_pgrid --point-depth=source=stereo --point-depth=stereo_refine=true
fq ss_pgrid_none ss_pgrid $NONE
fq views ss_views
fq vsparse_sim ss_pgrid_vsparse
fq vsparse_stereo ss_pgrid_vsparse $STEREO
fq vsparse_none ss_pgrid_vsparse $NONE
