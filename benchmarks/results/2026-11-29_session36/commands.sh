# Session 36. Device calls from the repository root with carry [".whl"] (benchmarks/results moved out first),
# kind nvidia-h200 (the only kind lent: one H200, 16 CPU cores), timeout 598 each. The same command three times;
# every call found a fresh machine (the 30-s warm window passed while the command was written out), so each ran
# the data phases, the SS VAE and the two view pretrainings, and the flows were skipped by the deadline:
#   call 1: 489 s; call 2: 454 s; call 3: 494 s. 1,621 device-seconds held; given back with 179 s left.
bash benchmarks/start_run.sh /tmp/gr 578 -- python3 benchmarks/full_pipeline.py --root /tmp/gr --resume --workers 15 --scenes 320 --val-items 144:160 --loader-workers 5 --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 3 --view-pretrain-minutes 3 --view-pretrain-args stage.datamodule.batch_size=256 --view-pretrain-args stage.datamodule.num_workers=4 --view-pretrain-variant dhalf stage.module.loss_weights.log_depth=0.25 stage.module.loss_weights.depth_bins=0.25 --flows ss_flow_cell --flow-variant "ss_flow_cell_r144=ss_flow_cell:stage.datamodule.train_shards=54" --flow-minutes 30 --flow-horizon-minutes 13 --deadline-minutes 9.6 --reserve-minutes 2.4 --flow-val-every 100000 --flow-batch none --flow-args stage.module.symmetry_augment=true --flow-args stage.module.lr=3e-4 --flow-args stage.module.lr_new=1e-3 --flow-args stage.module.compile_blocks=true --flow-args stage.module.warmup_steps=200 --flow-args stage.module.ema_decay=0.995 --flow-args stage.module.ema_warmup=true --flow-args stage.module.objective.p_endpoint=0.1 --flow-quality-chunks 48 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=8 --flow-quality-args=--save-occupancy; [ $? = 3 ] && bash /tmp/repo/benchmarks/watch_run.sh /tmp/gr/results $OUT 578
# CPU, after the calls: each /work/.device/N/results.tar.gz extracted into callN/, live/ and DONE dropped, and the
# files of call2/ and call3/ byte-identical to call1/'s dropped (the contact sheet). The three manifests agree apart
# from their timings (the same rooms, chunks and views each time). Held-out pretraining metrics: the last
# validation row of each callN/metrics_view_pretrain{,_dhalf}.csv (val/depth_abs_rel, val/depth_hit,
# val/normal_deg, val/base_colour_psnr); the table's differences are the three paired differences' mean and s.e.
#
# CPU A/B of the pretraining's loss weights, continuing session 35's (/tmp/fr: 120 rooms at the tiny preset, 64-px
# views, 420 held-out views of 18 rooms; run_arm.sh is session 34's train.py line, see session 35's commands.sh);
# two arms side by side, one core each; every arm names all the weights it changes:
SEED=0 bash run_arm.sh depth_quarter 1200 stage.module.loss_weights.log_depth=0.125 stage.module.loss_weights.depth_bins=0.125 &
SEED=0 bash run_arm.sh uniform_half 1200 stage.module.loss_weights.base_colour=0.5 stage.module.loss_weights.normal=0.25 stage.module.loss_weights.log_depth=0.25 stage.module.loss_weights.depth_bins=0.25 &
wait
SEED=1 bash run_arm.sh depth_quarter_s1 1200 stage.module.loss_weights.log_depth=0.125 stage.module.loss_weights.depth_bins=0.125 &
SEED=0 bash run_arm.sh depth_eighth 1200 stage.module.loss_weights.log_depth=0.0625 stage.module.loss_weights.depth_bins=0.0625 &
wait
# Seed 2, after the default changed (both arms name their depth weights):
SEED=2 bash run_arm.sh old_default_s2 1200 stage.module.loss_weights.log_depth=0.5 stage.module.loss_weights.depth_bins=0.5 &
SEED=2 bash run_arm.sh depth_quarter_s2 1200 stage.module.loss_weights.log_depth=0.125 stage.module.loss_weights.depth_bins=0.125 &
wait
for n in depth_quarter uniform_half depth_quarter_s1 depth_eighth old_default_s2 depth_quarter_s2; do cp /tmp/fr/runs/$n/csv/version_0/metrics.csv cpu_loss_weights/metrics_view_pretrain_$n.csv; done
