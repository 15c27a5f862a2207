#!/usr/bin/env bash
# GPU machine: build >= 200 synthetic chunks (preset small), train the three VAEs side by side on one GPU for a
# fixed wall-clock budget, then measure held-out quality (benchmarks/vae_quality.py) and run the GPU tests.
#   bash benchmarks/gpu_vae_run.sh OUT_DIR MINUTES_OF_TRAINING
set -uo pipefail
FINAL=${1:-/tmp/out}; MIN=${2:-4}
printf -v MAXTIME "00:00:%02d:00" "$MIN"   # Lightning wants DD:HH:MM:SS
OUT=/tmp/genrecon_results   # everything lands here; FINAL gets a tarball plus the headline files
mkdir -p "$OUT" "$FINAL"
export PYTHONPATH=$PWD:${PYTHONPATH:-} WANDB_MODE=disabled PYTHONUNBUFFERED=1
D=/tmp/genrecon_data; L=/tmp/genrecon_logs
stamp() { date +%s; }
t0=$(stamp)
GENRECON_RUN_NAME=prep python prepare.py preset=small dataset.num_scenes=80 dataset.val_fraction=0.1 num_workers=16 \
  render.scale=1 render.max_cameras=32 paths.data_dir=$D paths.log_dir=$L > "$OUT/prepare.log" 2>&1 || tail -30 "$OUT/prepare.log"
t1=$(stamp)
cp $D/synthetic_small/manifest.json "$OUT/manifest.json"; cp $D/synthetic_small/contact_sheet.png "$OUT/" 2>/dev/null
for s in ss_vae shape_vae tex_vae; do
  GENRECON_RUN_NAME=$s python train.py stage=$s preset=small hardware=gpu logger=csv paths.data_dir=$D paths.log_dir=$L \
    stage.max_steps=1000000 +trainer.max_time=$MAXTIME stage.val_every_n_steps=250 stage.val_batches=3 \
    stage.checkpoint_every_n_steps=100 stage.datamodule.num_workers=4 +stage.datamodule.batches_per_epoch=500 \
    +trainer.enable_progress_bar=false callbacks.progress_bar=null callbacks.model_summary=null > "$OUT/train_$s.log" 2>&1 &
done
( python -c "import nvdiffrast.torch as dr; dr.RasterizeCudaContext()" > /dev/null 2>&1
  export PYTHONPATH=$PYTHONPATH:$(ls -d ~/.cache/torch_extensions/*/nvdiffrast_plugin* 2>/dev/null | head -1)
  python -m pytest -q -m gpu tests/render/test_backends_gpu.py tests/pipelines/test_glb.py > "$OUT/gpu_tests.log" 2>&1 ) &
wait
t2=$(stamp)
C=$L/train/runs
python benchmarks/vae_quality.py --shards $D/synthetic_small/shards --ss-vae $C/ss_vae/checkpoints/last.ckpt \
  --shape-vae $C/shape_vae/checkpoints/last.ckpt --tex-vae $C/tex_vae/checkpoints/last.ckpt > "$OUT/vae_quality.json" 2> "$OUT/vae_quality.err"
t3=$(stamp)
for s in ss_vae shape_vae tex_vae; do cp $C/$s/csv/version_0/metrics.csv "$OUT/metrics_$s.csv" 2>/dev/null; tail -3 "$OUT/train_$s.log"; done
echo "{\"prepare_s\": $((t1-t0)), \"train_s\": $((t2-t1)), \"eval_s\": $((t3-t2))}" > "$OUT/timings.json"
cat "$OUT/timings.json" "$OUT/vae_quality.json"; tail -3 "$OUT/gpu_tests.log"; tail -5 "$OUT/vae_quality.err"
tar czf "$FINAL/run.tar.gz" -C "$OUT" .
cp "$OUT/vae_quality.json" "$OUT/timings.json" "$FINAL/" 2>/dev/null; cp "$OUT/contact_sheet.png" "$FINAL/" 2>/dev/null
