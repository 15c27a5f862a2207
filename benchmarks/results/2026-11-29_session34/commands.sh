# Session 34. Device calls from the repository root with carry [".whl"] (benchmarks/results moved out first),
# kind nvidia-h200 (the only kind lent this session: one H200, 16 CPU cores), timeout 598 each. The same command
# three times, each sent within seconds of the last reply:
#   call 1 (fresh machine, 444 s): prepare (320 rooms, 15 workers, 201 s), the 3-minute SS VAE, the 1.5-minute SS
#     VAE "short" and the view pretraining all on the one GPU, both encodings; the flows skipped (no time left);
#   call 2 (call 1's machine, 560 s): both flows trained 7.2 minutes side by side on the GPU (1,132 / 1,129 steps
#     at batch 8), both scored on 48 held-out chunks;
#   call 3 (504 s): a fresh machine (call 2's was taken back between the calls): the data phases again, the flows
#     skipped: a replicate of call 1's VAEs.
# 1,629 device-seconds held; the machine was given back with 170 s left.
bash benchmarks/start_run.sh /tmp/gr 578 -- python3 benchmarks/full_pipeline.py --root /tmp/gr --resume --workers 15 --scenes 320 --val-items 144:160 --loader-workers 5 --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 3 --ss-vae-variant short minutes=1.5 stage.datamodule.num_workers=3 --view-pretrain-minutes 3 --view-pretrain-args stage.datamodule.batch_size=256 --view-pretrain-args stage.datamodule.num_workers=6 --flows ss_flow_cell --flow-variant "ss_flow_cell_vshort=ss_flow_cell:ss_vae=short" --flow-minutes 30 --flow-horizon-minutes 13 --deadline-minutes 9.6 --reserve-minutes 2.4 --flow-val-every 1000 --flow-batch none --flow-args stage.module.symmetry_augment=true --flow-args stage.module.lr=3e-4 --flow-args stage.module.lr_new=1e-3 --flow-args stage.module.compile_blocks=true --flow-args stage.module.warmup_steps=200 --flow-args stage.module.ema_decay=0.995 --flow-args stage.module.ema_warmup=true --flow-args stage.module.objective.p_endpoint=0.1 --flow-quality-chunks 48 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=8 --flow-quality-args=--save-occupancy; [ $? = 3 ] && bash /tmp/repo/benchmarks/watch_run.sh /tmp/gr/results $OUT 578
# CPU, after the calls: each results.tar.gz extracted into callN/ (call 2's from its two parts), live/ and DONE
# dropped, npz '.prob' keys stripped, steps_*.jsonl gzipped; call2/ and call3/ drop the files byte-identical to
# call1/'s; then:
R=benchmarks/results; S=$R/2026-11-29_session34; N=$S/call2/flow_quality_cell.json
E="--entries ss_flow ss_flow@x0 ss_flow@x0pavg8 --metrics iou iou_32 fscore_1vox"
python benchmarks/compare_quality.py $N $S/call2/flow_quality_cell_vshort.json $E --out $S/compare_vae3_vs_vshort.json
python benchmarks/compare_quality.py $N $S/call2/flow_quality_cell_vshort.json --first 12 $E --out $S/compare_vae3_vs_vshort_first12.json
python benchmarks/compare_quality.py $N $R/2026-11-28_session33/call2/flow_quality_cell.json $E --out $S/compare_vae3_vs_s33_call2.json
python benchmarks/compare_quality.py $N $R/2026-11-28_session33/call2/flow_quality_cell.json --first 12 $E --out $S/compare_vae3_vs_s33_call2_first12.json
for a in cell cell_vshort; do python benchmarks/occupancy_placement.py $S/call2/flow_quality_${a}_occupancy.npz > $S/call2/occupancy_placement_${a}.json; done
# The across-run fit (new benchmarks/across_runs.py) over the 13 views-only scorings of sessions 30-34 on the 12
# chunks of session 29 (steps given where the file predates checkpoint_step):
python benchmarks/across_runs.py $R/2026-11-28_session30/one_call_x2/flow_quality_cell.json:batch=8:steps=674 $R/2026-11-28_session31/call1/flow_quality_cell.json:batch=32:steps=951 $R/2026-11-28_session31/call2/flow_quality_cell.json:batch=32:steps=2838 $R/2026-11-28_session31/call3/flow_quality_cell.json:batch=32:steps=4638 $R/2026-11-28_session32/call{1,2,3}/flow_quality_cell.json:batch=16 $R/2026-11-28_session32/call{1,2,3}/flow_quality_cell_sym.json:batch=16 $R/2026-11-28_session33/call2/flow_quality_cell.json:batch=16 $S/call2/flow_quality_cell.json:batch=8 $S/call2/flow_quality_cell_vshort.json:batch=8 --first 12 --target 0.7 --figure $S/across_runs_x0pavg8.png --out $S/across_runs_x0pavg8.json
# CPU A/B of the floor-ray channels (new: preset.image_encoder.geometry_channels=2) in the view pretraining: 120
# rooms prepared at the tiny preset with 64-px views (2,397 training and 420 held-out views of 18 rooms), a
# 4-block width-128 ViT with 8-px patches, 1,200 steps at batch 32 each, the two arms side by side (one core each):
python prepare.py dataset=synthetic dataset.num_scenes=120 dataset.val_fraction=0.15 preset=tiny preset.image_size=64 render.scale=1 render.max_cameras=24 num_workers=1 paths.data_dir=/tmp/fr/data paths.log_dir=/tmp/fr/logs contact_sheet.rooms=2
for arm in plain floor; do
  extra=$([ $arm = floor ] && echo preset.image_encoder.geometry_channels=2)
  python train.py stage=view_pretrain preset=tiny preset.image_size=64 dataset.root=/tmp/fr/data/synthetic_tiny hardware=cpu logger=csv preset.flow.cond_channels=128 preset.image_encoder.depth=4 preset.image_encoder.num_heads=4 stage.max_steps=1200 stage.val_every_n_steps=600 stage.val_batches=14 stage.datamodule.batch_size=32 stage.module.warmup_steps=100 stage.module.decay_steps=1200 seed=0 callbacks.progress_bar=null paths.output_dir=/tmp/fr/runs/$arm $extra &
done; wait
cp /tmp/fr/runs/floor/csv/version_0/metrics.csv $S/cpu_floor_rays/metrics_view_pretrain_floor.csv
cp /tmp/fr/runs/plain/csv/version_0/metrics.csv $S/cpu_floor_rays/metrics_view_pretrain_plain.csv
python benchmarks/view_depth_by_surface.py --scenes /tmp/fr/data/synthetic_tiny/scenes --image-size 64 /tmp/fr/runs/plain/checkpoints/last.ckpt /tmp/fr/runs/floor/checkpoints/last.ckpt --names plain floor --out $S/cpu_floor_rays/depth_by_surface.json
# The same A/B again at seed 1 (run_arm.sh: the train.py line above with seed=$SEED), then:
python benchmarks/view_depth_by_surface.py --scenes /tmp/fr/data/synthetic_tiny/scenes --image-size 64 /tmp/fr/runs/plain_s1/checkpoints/last.ckpt /tmp/fr/runs/floor_s1/checkpoints/last.ckpt --names plain floor --out $S/cpu_floor_rays/depth_by_surface_seed1.json
# CPU dry run of the next device run's shape at test size (a view-pretraining variant with the floor-ray channels
# feeding a flow variant, both flows scored):
python benchmarks/full_pipeline.py --root /tmp/dry34/gr --cpu --preset tiny --workers 2 --scenes 6 --val-items 3:4 --samples-per-shard 2 --loader-workers 1 --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 0.7 --view-pretrain-minutes 0.5 --view-pretrain-variant floor preset.image_encoder.geometry_channels=2 --flows ss_flow_cell --flow-variant "ss_flow_cell_floor=ss_flow_cell:view_pretrain=floor" --place ss_flow_cell=0 --place ss_flow_cell_floor=1 --flow-minutes 1 --flow-val-every 100000 --flow-batch none --flow-args stage.module.symmetry_augment=true --flow-args stage.module.warmup_steps=20 --flow-quality-chunks 2 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=2
