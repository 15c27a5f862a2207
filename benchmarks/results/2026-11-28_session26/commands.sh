# Session 26 (4 x H100, nvidia-h100-x4). The first call started session 25's planned run (RESULTS, session 25);
# the follow-up came too late (a turn cut off between calls), the machine was released and only lost_run/ came
# back. With the 1,075 device-seconds left, a shortened run (VAEs 2.5 min, view pretraining 3 min, deadline 15.5
# min) in two calls and a third of 40 s:
bash benchmarks/start_run.sh /tmp/gr 560 -- python3 benchmarks/full_pipeline.py --root /tmp/gr --workers 60 --scenes 384 --loader-workers 10 --phases prepare vae encode flow flow_quality --vae-minutes 2.5 --view-pretrain-minutes 3 --view-pretrain-args stage.datamodule.batch_size=256 --view-pretrain-args stage.datamodule.num_workers=16 --place ss_vae=0 --place shape_vae=1 --place tex_vae=2 --place view_pretrain=3 --flows ss_flow_cell --flow-variant "ss_flow_cell_pvs=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15};preset.flow.point_grid={subdivisions:4};stage.module.lr=3e-4;stage.module.lr_new=1e-3" --place ss_flow_cell=0,1,2 --place ss_flow_cell_pvs=3 --flow-minutes 18 --deadline-minutes 15.5 --reserve-minutes 2.5 --flow-val-every 1000 --flow-batch none --flow-args stage.module.lr=9e-4 --flow-args stage.module.lr_new=3e-3 --flow-args stage.module.compile_blocks=true --flow-args stage.module.warmup_steps=200 --flow-args stage.module.ema_decay=0.995 --flow-args stage.module.ema_warmup=true --flow-args stage.module.objective.p_endpoint=0.1 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=16 --flow-quality-args=--save-occupancy --flow-quality-extra "flow_quality_cell_train=flow_quality_cell:--split=train" --flow-quality-extra "flow_quality_cell_pvs_none=flow_quality_cell_pvs:--point-depth=source=none"
bash /tmp/repo/benchmarks/watch_run.sh /tmp/gr/results $OUT 400
bash /tmp/repo/benchmarks/watch_run.sh /tmp/gr/results $OUT 40
# CPU, afterwards:
for f in cell cell_train cell_pvs cell_pvs_none; do
  python benchmarks/occupancy_placement.py benchmarks/results/2026-11-28_session26/flow_quality_${f}_occupancy.npz \
    > benchmarks/results/2026-11-28_session26/occupancy_placement_$f.json
done
