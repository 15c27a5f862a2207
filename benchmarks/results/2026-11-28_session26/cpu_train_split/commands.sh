# Session 24's CPU views-only model (40 small rooms, reduced recipe, /tmp/loc40; see
# ../../2026-11-27_session24/cpu_sparse_points/commands.sh) scored on its first 12 training chunks; the held-out
# scoring of the same model is session 24's fq_views.json.
python benchmarks/flow_quality.py --latents /tmp/loc40/data/synthetic_small/latents \
  --ss-vae /tmp/loc40/logs/train/runs/ss_vae/checkpoints/last.ckpt \
  --ss-flow /tmp/loc40/logs/train/runs/ss_views/checkpoints/last.ckpt \
  --max-chunks 12 --batch-size 4 --device cpu --x0-estimate --x0-average 16 --save-occupancy --split train \
  --out /tmp/loc40/fq_views_train.json
