#!/bin/bash
# usage: run_arm.sh NAME STEPS [extra overrides]
cd /work/main && source /work/venv/bin/activate
NAME=$1; STEPS=$2; shift 2
python train.py stage=view_pretrain preset=tiny preset.image_size=64 dataset.root=/tmp/fr/data/synthetic_tiny hardware=cpu logger=csv \
  preset.flow.cond_channels=128 preset.image_encoder.depth=4 preset.image_encoder.num_heads=4 \
  stage.max_steps=$STEPS stage.val_every_n_steps=$((STEPS/2)) stage.val_batches=14 stage.datamodule.batch_size=32 \
  stage.module.warmup_steps=100 stage.module.decay_steps=$STEPS seed=${SEED:-0} callbacks.progress_bar=null \
  paths.output_dir=/tmp/fr/runs/$NAME "$@" > /tmp/fr/$NAME.log 2>&1
