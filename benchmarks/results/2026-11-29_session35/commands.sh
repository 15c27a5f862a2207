# Session 35. Device calls from the repository root with carry [".whl"] (benchmarks/results moved out first),
# kind nvidia-h200 (the only kind lent this session: one H200, 16 CPU cores), timeout 598 each.
#   call 1 (fresh machine, 489 s): prepare (320 rooms, 15 workers, 228 s), the 3-minute SS VAE beside the two view
#     pretrainings (colour only; with the floor-ray channels) on the one GPU, encoding; the flows skipped (no time);
#   call 2 (call 1's machine, 585 s): ss_flow_cell and ss_flow_cell_floor 7.2 minutes side by side on the GPU
#     (1,185 / 1,172 steps at batch 8), both scored on 48 held-out chunks;
#   call 3 (fresh machine, 549 s, nothing came back): meant as a seed-1 replicate of the two pretrainings plus a
#     4.5-minute floor-ray one; full_pipeline.py refused its arguments at once (the default --flows include
#     shape_flow, which needs shape_vae's latents) and watch_run.sh waited out its 545 s. Mended in this session:
#     watch_run.sh now ends when the run's process is gone and prints the run's own output.
# 1,738 device-seconds held; the machine was given back with 62 s left.
# Calls 1 and 2 (the same command, call 2 sent within seconds of call 1's reply):
bash benchmarks/start_run.sh /tmp/gr 578 -- python3 benchmarks/full_pipeline.py --root /tmp/gr --resume --workers 15 --scenes 320 --val-items 144:160 --loader-workers 5 --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 3 --view-pretrain-minutes 3 --view-pretrain-args stage.datamodule.batch_size=256 --view-pretrain-args stage.datamodule.num_workers=4 --view-pretrain-variant floor preset.image_encoder.geometry_channels=2 --flows ss_flow_cell --flow-variant "ss_flow_cell_floor=ss_flow_cell:view_pretrain=floor" --flow-minutes 30 --flow-horizon-minutes 13 --deadline-minutes 9.6 --reserve-minutes 2.4 --flow-val-every 100000 --flow-batch none --flow-args stage.module.symmetry_augment=true --flow-args stage.module.lr=3e-4 --flow-args stage.module.lr_new=1e-3 --flow-args stage.module.compile_blocks=true --flow-args stage.module.warmup_steps=200 --flow-args stage.module.ema_decay=0.995 --flow-args stage.module.ema_warmup=true --flow-args stage.module.objective.p_endpoint=0.1 --flow-quality-chunks 48 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=8 --flow-quality-args=--save-occupancy; [ $? = 3 ] && bash /tmp/repo/benchmarks/watch_run.sh /tmp/gr/results $OUT 578
# (at this commit the presets still defaulted to geometry_channels: 0; they default to 2 from this session on, so
# the same A/B now needs the colour-only arm named: --view-pretrain-args preset.image_encoder.geometry_channels=0)
# Call 3 (failed at once, see above; the missing argument was --flows with nothing after it):
bash benchmarks/start_run.sh /tmp/gr 545 -- python3 benchmarks/full_pipeline.py --root /tmp/gr --resume --workers 15 --scenes 320 --val-items 144:160 --loader-workers 5 --phases prepare vae --vaes ss_vae --vae-minutes 1 --view-pretrain-minutes 3 --view-pretrain-args stage.datamodule.batch_size=256 --view-pretrain-args stage.datamodule.num_workers=3 --view-pretrain-args seed=1 --view-pretrain-variant floor preset.image_encoder.geometry_channels=2 --view-pretrain-variant floor_long minutes=4.5 preset.image_encoder.geometry_channels=2; [ $? = 3 ] && bash /tmp/repo/benchmarks/watch_run.sh /tmp/gr/results $OUT 545
# CPU, after the calls: each results.tar.gz extracted into callN/, live/ and DONE dropped, npz '.prob' keys stripped,
# steps_*.jsonl gzipped; call2/ drops the files byte-identical to call1/'s; then:
R=benchmarks/results; S=$R/2026-11-29_session35; N=$S/call2/flow_quality_cell_floor.json
E="--entries ss_flow ss_flow@x0 ss_flow@x0pavg8 --metrics iou iou_32 fscore_1vox"
python benchmarks/compare_quality.py $N $S/call2/flow_quality_cell.json $E --out $S/compare_floor_vs_plain.json
python benchmarks/compare_quality.py $N $S/call2/flow_quality_cell.json --first 12 $E --out $S/compare_floor_vs_plain_first12.json
python benchmarks/compare_quality.py $N $R/2026-11-28_session33/call2/flow_quality_cell.json $E --out $S/compare_floor_vs_s33_call2.json
python benchmarks/compare_quality.py $N $R/2026-11-28_session33/call2/flow_quality_cell.json --first 12 $E --out $S/compare_floor_vs_s33_call2_first12.json
python benchmarks/compare_quality.py $S/call2/flow_quality_cell.json $R/2026-11-29_session34/call2/flow_quality_cell.json $E --out $S/compare_plain_vs_s34_call2.json
for a in cell cell_floor; do python benchmarks/occupancy_placement.py $S/call2/flow_quality_${a}_occupancy.npz > $S/call2/occupancy_placement_${a}.json; done
# The across-run fit of session 34 with this session's colour-only arm added (14 views-only scorings, 12 chunks):
T=$R/2026-11-29_session34
python benchmarks/across_runs.py $R/2026-11-28_session30/one_call_x2/flow_quality_cell.json:batch=8:steps=674 $R/2026-11-28_session31/call1/flow_quality_cell.json:batch=32:steps=951 $R/2026-11-28_session31/call2/flow_quality_cell.json:batch=32:steps=2838 $R/2026-11-28_session31/call3/flow_quality_cell.json:batch=32:steps=4638 $R/2026-11-28_session32/call{1,2,3}/flow_quality_cell.json:batch=16 $R/2026-11-28_session32/call{1,2,3}/flow_quality_cell_sym.json:batch=16 $R/2026-11-28_session33/call2/flow_quality_cell.json:batch=16 $T/call2/flow_quality_cell.json:batch=8 $T/call2/flow_quality_cell_vshort.json:batch=8 $S/call2/flow_quality_cell.json:batch=8 --first 12 --target 0.7 --figure $S/across_runs_x0pavg8.png --out $S/across_runs_x0pavg8.json
# CPU A/B of the view pretraining's loss weights, on session 34's CPU data (/tmp/fr: 120 rooms at the tiny preset,
# 64-px views, 420 held-out views of 18 rooms) against session 34's seed-0 floor-ray arm (`floor`, the same command
# then with preset.image_encoder.geometry_channels=2, now the default); run_arm.sh is session 34's train.py line
# (4-block width-128 ViT, 8-px patches, 1,200 steps at batch 32, seed $SEED) with the arm's overrides appended;
# two arms side by side, one core each (the weights' defaults: base_colour 1.0, normal 0.5, log_depth 0.5,
# depth_bins 0.5):
SEED=0 bash run_arm.sh depth2 1200 stage.module.loss_weights.log_depth=1.0 stage.module.loss_weights.depth_bins=1.0 &
SEED=0 bash run_arm.sh depth4 1200 stage.module.loss_weights.log_depth=2.0 stage.module.loss_weights.depth_bins=2.0 &
wait
SEED=0 bash run_arm.sh normal2 1200 stage.module.loss_weights.normal=1.0 &
SEED=0 bash run_arm.sh depth_half 1200 stage.module.loss_weights.log_depth=0.25 stage.module.loss_weights.depth_bins=0.25 &
wait
for n in depth2 depth4 normal2 depth_half; do cp /tmp/fr/runs/$n/csv/version_0/metrics.csv $S/cpu_loss_weights/metrics_view_pretrain_$n.csv; done
# The depth x 1/2 arm again at seed 1, alone, against session 34's seed-1 floor-ray arm (`floor_s1`):
SEED=1 bash run_arm.sh depth_half_s1 1200 stage.module.loss_weights.log_depth=0.25 stage.module.loss_weights.depth_bins=0.25
cp /tmp/fr/runs/depth_half_s1/csv/version_0/metrics.csv $S/cpu_loss_weights/metrics_view_pretrain_depth_half_s1.csv
