# Session 28 (nvidia-h100-x2 asked; 2 x NVIDIA H200 came; 4-GPU kinds were not lent at the session's start).
# lost_run1/: session 27's planned run adapted to two GPUs (two one-GPU points arms, _pvs and _pvb, scored with
# simulated, stereo_h2 and no points). Its first call returned at 565 s with the flows starting; the follow-up call,
# issued within seconds, found a fresh machine (/tmp/repo gone): the run was lost.
bash benchmarks/start_run.sh /tmp/gr 560 -- python3 benchmarks/full_pipeline.py --root /tmp/gr --workers 30 --scenes 384 --loader-workers 10 --phases prepare vae encode flow flow_quality --vae-minutes 4 --view-pretrain-minutes 5 --view-pretrain-args stage.datamodule.batch_size=256 --view-pretrain-args stage.datamodule.num_workers=12 --place ss_vae=0 --place tex_vae=0 --place shape_vae=1 --place view_pretrain=1 --flows --flow-variant "ss_flow_cell_pvs=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15};preset.flow.point_grid={subdivisions:4}" --flow-variant "ss_flow_cell_pvb=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15,block_keep:0.0};preset.flow.point_grid={subdivisions:4}" --place ss_flow_cell_pvs=0 --place ss_flow_cell_pvb=1 --flow-minutes 18 --deadline-minutes 25.5 --reserve-minutes 5 --flow-val-every 1000 --flow-batch none --flow-args stage.module.lr=3e-4 --flow-args stage.module.lr_new=1e-3 --flow-args stage.module.compile_blocks=true --flow-args stage.module.warmup_steps=200 --flow-args stage.module.ema_decay=0.995 --flow-args stage.module.ema_warmup=true --flow-args stage.module.objective.p_endpoint=0.1 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=16 --flow-quality-args=--save-occupancy --flow-quality-extra "flow_quality_cell_pvs_st2=flow_quality_cell_pvs:--point-depth=preset=stereo_h2" --flow-quality-extra "flow_quality_cell_pvb_st2=flow_quality_cell_pvb:--point-depth=preset=stereo_h2" --flow-quality-extra "flow_quality_cell_pvb_none=flow_quality_cell_pvb:--point-depth=source=none"
bash /tmp/repo/benchmarks/watch_run.sh /tmp/gr/results $OUT 570   # rc 127: no /tmp/repo, a fresh machine
# lost_run2/: at once on that fresh machine, the two-call form (VAEs 2.5 min, view pretraining 3 min, deadline 15,
# 4 min for scoring): the same arms and scorings. Its first call returned at 589 s, the flows 3 min in; the
# follow-up, again issued within seconds, again found a fresh machine.
bash benchmarks/start_run.sh /tmp/gr 585 -- python3 benchmarks/full_pipeline.py ... --vae-minutes 2.5 --view-pretrain-minutes 3 ... --deadline-minutes 15 --reserve-minutes 4 ...  # otherwise as above
bash /tmp/repo/benchmarks/watch_run.sh /tmp/gr/results $OUT 440   # rc 127 again
# Then a probe of the release on the third machine: a 300-s call with no files back, and a call 4 s after it found
# the machine (and its /tmp/marker) still there.
date +%s > /tmp/marker; sleep 300; date +%s
cat /tmp/marker; date +%s; uptime
# CPU dry run of the one-call form (benchmarks/full_pipeline.py --vaes ss_vae --flows + two variants), 397 s:
python benchmarks/full_pipeline.py --root /tmp/dry28b --cpu --preset tiny --workers 2 --scenes 6 --loader-workers 1 --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 1 --view-pretrain-minutes 1 --flows --flow-variant "ss_flow_cell_pvs=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15};preset.flow.point_grid={subdivisions:2}" --flow-variant "ss_flow_cell_pvb=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15,block_keep:0.0};preset.flow.point_grid={subdivisions:2}" --place ss_flow_cell_pvs=0 --place ss_flow_cell_pvb=1 --flow-minutes 1 --flow-val-every 4 --flow-quality-chunks 2 --flow-batch none --flow-args stage.module.warmup_steps=200 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=2 --flow-quality-args=--save-occupancy --flow-quality-extra "flow_quality_cell_pvb_none=flow_quality_cell_pvb:--point-depth=source=none"
# CPU diagnostic (cpu_stereo_oracle/, 1,090 s): session 24's reduced points-trained model ss_pgrid_vsparse (its
# cpu_sparse_points/commands.sh) scored with stereo_h1's points moved onto the true surface (source=stereo_oracle),
# against session 27's plain stereo_h1 scoring (cpu_stereo_horizontal.json) and session 24's simulated / no points.
D=/tmp/loc40
python benchmarks/flow_quality.py --latents $D/data/synthetic_small/latents --ss-vae $D/logs/train/runs/ss_vae/checkpoints/last.ckpt --ss-flow $D/logs/train/runs/ss_pgrid_vsparse/checkpoints/last.ckpt --max-chunks 12 --batch-size 4 --device cpu --x0-estimate --x0-average 16 --save-occupancy --point-depth=preset=stereo_h1 --point-depth=source=stereo_oracle --out cpu_stereo_oracle/fq_vsparse_oracle_h1.json
R=benchmarks/results; S=$R/2026-11-27_session24/cpu_sparse_points; O=$R/2026-11-28_session28/cpu_stereo_oracle
python benchmarks/compare_quality.py $O/fq_vsparse_oracle_h1.json $R/2026-11-28_session27/cpu_stereo_horizontal.json --entries ss_flow ss_flow@x0pavg16 --metrics iou iou_32 --out $O/compare_oracle_vs_stereo.json
python benchmarks/compare_quality.py $O/fq_vsparse_oracle_h1.json $S/fq_vsparse_none.json --entries ss_flow ss_flow@x0pavg16 --metrics iou iou_32 --out $O/compare_oracle_vs_none.json
python benchmarks/compare_quality.py $S/fq_vsparse_sim.json $O/fq_vsparse_oracle_h1.json --entries ss_flow ss_flow@x0pavg16 --metrics iou iou_32 --out $O/compare_sim_vs_oracle.json
# The same for stereo_h2 (plain and moved onto the surface), both at once with OMP_NUM_THREADS=1, 2,090 s:
python benchmarks/flow_quality.py ... --point-depth=preset=stereo_h2 --out cpu_stereo_oracle/fq_vsparse_h2.json
python benchmarks/flow_quality.py ... --point-depth=preset=stereo_h2 --point-depth=source=stereo_oracle --out cpu_stereo_oracle/fq_vsparse_oracle_h2.json
python benchmarks/compare_quality.py $O/fq_vsparse_oracle_h2.json $O/fq_vsparse_h2.json --entries ss_flow ss_flow@x0pavg16 --metrics iou --out $O/compare_oracle_h2_vs_h2.json
python benchmarks/compare_quality.py $O/fq_vsparse_h2.json $S/fq_vsparse_none.json --entries ss_flow ss_flow@x0pavg16 --metrics iou --out $O/compare_h2_vs_none.json
