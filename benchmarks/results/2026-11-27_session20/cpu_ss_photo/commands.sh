#!/bin/bash
# Data and the SS-VAE: session 17/18 CPU study (/tmp/loc40: 40 small rooms; benchmarks/results/2026-11-27_session18/cpu_ss_endpoint/commands.sh).
# Baseline: session 18's ss_flow_end, scored in results/2026-11-27_session19/cpu_ss_split/ (same 12 chunks and seeds).
# CPU study (session 20): session 18's ss_flow_end with the photo cue added, same seed and 30 minutes.
cd /work/main
PY=/work/venv/bin/python
COMMON="preset=small paths.data_dir=/tmp/loc40/data paths.log_dir=/tmp/ssx/logs hardware=cpu logger=csv stage.max_steps=10000000 stage.datamodule.num_workers=0 +stage.datamodule.batches_per_epoch=500 +trainer.enable_progress_bar=false callbacks.progress_bar=null callbacks.model_summary=null +callbacks.time_budget._target_=callbacks.time_budget.TimeBudgetDecay"
GENRECON_RUN_NAME=ss_flow_end_photo $PY train.py stage=ss_flow $COMMON +trainer.max_time=00:00:30:00 stage.checkpoint_every_n_steps=500 stage.val_every_n_steps=250 stage.val_batches=2 stage.datamodule.batch_size=2 preset.flow.width=96 preset.flow.num_blocks=3 preset.flow.num_heads=4 preset.flow.cond_channels=96 preset.image_encoder.depth=2 preset.image_encoder.num_heads=4 stage.datamodule.max_views=8 stage.module.lr=1e-3 stage.module.lr_new=1e-3 stage.module.warmup_steps=50 stage.module.ema_decay=0.99 stage.module.ema_warmup=true stage.module.occupancy_aux_weight=1.0 stage.module.sample_batches=1 stage.module.sampler.steps=4 stage.module.ss_vae_ckpt=/tmp/ssx/logs/train/runs/ss_vae/checkpoints/last.ckpt stage.module.objective.p_endpoint=0.1 "preset.flow.photo_cue={subdivisions:4,hidden:256}" > /tmp/ssx/ss_flow_end_photo.log 2>&1 || exit 1
echo TRAIN_DONE
$PY benchmarks/flow_quality.py --latents /tmp/loc40/data/synthetic_small/latents --ss-vae /tmp/ssx/logs/train/runs/ss_vae/checkpoints/last.ckpt --ss-flow /tmp/ssx/logs/train/runs/ss_flow_end_photo/checkpoints/last.ckpt --max-chunks 12 --batch-size 4 --device cpu --x0-estimate --x0-average 16 --out /tmp/ssx/fq_ss_end_photo.json > /tmp/ssx/fq_ss_end_photo.log 2>&1
echo ALL_DONE
