# Session 29 device calls on one NVIDIA H200 (kind nvidia-h200, carry [".whl"]), results.tar.gz of each call
# unpacked into call1_lost_flows_232/ (data, SS VAE, view pretraining, 2.8 min of flows; its machine was gone at the
# next call), call2_fresh_onecall/ (the fallback: the whole run in one call, 1.5 min of flows, scored) and
# call3_resumed/ (the same machine as call 2: both flows resumed with --resume-flows for 5 min more, scored).
#   call 1: bash s29/call.sh first
#   call 2: bash s29/call.sh next
#   call 3: if [ -f /tmp/gr/logs/train/runs/ss_flow_cell_pvb/checkpoints/last.ckpt ]; then echo KEPT; uptime;
#           DEADLINE=8.0 RESERVE=3.0 WATCH=500 bash s29/call.sh next; else echo FRESH; fi
# s29/call.sh (untracked during the session) follows.
# | #!/usr/bin/env bash
# | # Session 29 device calls (untracked; copied into commands.sh afterwards). usage: bash s29/call.sh first|next|final
# | # A machine that kept /tmp/gr resumes both flows (--resume-flows) and scores them; a fresh one starts over.
# | MODE=$1; ROOT=/tmp/gr
# | V1='ss_flow_cell_pvs=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15};preset.flow.point_grid={subdivisions:4}'
# | V2='ss_flow_cell_pvb=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15,block_keep:0.0};preset.flow.point_grid={subdivisions:4}'
# | COMMON=(--root $ROOT --workers 15 --scenes 160 --loader-workers 5 --vaes ss_vae --flows
# |   --flow-variant "$V1" --flow-variant "$V2" --flow-minutes 30 --flow-val-every 1000 --flow-batch none
# |   --flow-args stage.module.lr=3e-4 --flow-args stage.module.lr_new=1e-3 --flow-args stage.module.compile_blocks=true
# |   --flow-args stage.module.warmup_steps=200 --flow-args stage.module.ema_decay=0.995
# |   --flow-args stage.module.ema_warmup=true --flow-args stage.module.objective.p_endpoint=0.1
# |   --flow-quality-chunks 12 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=8
# |   --flow-quality-args=--save-occupancy
# |   --flow-quality-extra "flow_quality_cell_pvs_st2=flow_quality_cell_pvs:--point-depth=preset=stereo_h2"
# |   --flow-quality-extra "flow_quality_cell_pvb_st2=flow_quality_cell_pvb:--point-depth=preset=stereo_h2")
# | MORE=(--flow-quality-extra "flow_quality_cell_pvs_st2o=flow_quality_cell_pvs:--point-depth=preset=stereo_h2;--point-depth=source=stereo_oracle"
# |   --flow-quality-extra "flow_quality_cell_pvb_none=flow_quality_cell_pvb:--point-depth=source=none")
# | DATA=(--vae-minutes 2 --view-pretrain-minutes 2 --view-pretrain-args stage.datamodule.batch_size=256
# |   --view-pretrain-args stage.datamodule.num_workers=6)
# | DEADLINE=${DEADLINE:-9.4}
# | if [ -f $ROOT/logs/train/runs/ss_flow_cell_pvb/checkpoints/last.ckpt ]; then
# |   echo "== machine kept: resuming the flows"; ls -la $ROOT/logs/train/runs/*/checkpoints/
# |   PHASES=(--phases flow flow_quality --resume-flows --deadline-minutes $DEADLINE --reserve-minutes ${RESERVE:-3.5})
# |   [ "$MODE" = final ] && PHASES+=("${MORE[@]}")
# | elif [ "$MODE" = first ]; then
# |   echo "== fresh machine: data, SS VAE, view pretraining, flows (scored in the next call)"
# |   PHASES=(--phases prepare vae encode flow "${DATA[@]}" --deadline-minutes 9.3 --reserve-minutes 1.2)
# | else
# |   echo "== fresh machine: the whole run in this call"
# |   PHASES=(--phases prepare vae encode flow flow_quality "${DATA[@]}" --deadline-minutes $DEADLINE --reserve-minutes 3.5)
# | fi
# | exec ${DRYRUN:+echo} bash benchmarks/start_run.sh $ROOT ${WATCH:-585} -- python3 benchmarks/full_pipeline.py "${COMMON[@]}" "${PHASES[@]}"
# CPU, after the calls (paired differences and placement of the errors):
R=benchmarks/results/2026-11-28_session29/call3_resumed
for pair in "pvb_st2 pvs_st2" "pvb pvs" "pvs_st2 pvs" "pvb_st2 pvb"; do set -- $pair
  python benchmarks/compare_quality.py $R/flow_quality_cell_$1.json $R/flow_quality_cell_$2.json \
    --entries ss_flow ss_flow@x0 ss_flow@x0avg8 --metrics iou iou_32 --out $R/compare_$1_vs_$2.json; done
python benchmarks/compare_quality.py $R/flow_quality_cell_pvs.json \
  benchmarks/results/2026-11-28_session29/call2_fresh_onecall/flow_quality_cell_pvs.json --entries ss_flow \
  --metrics iou --out $R/compare_pvs_1163_vs_232.json
for f in pvs pvb pvs_st2 pvb_st2; do
  python benchmarks/occupancy_placement.py $R/flow_quality_cell_${f}_occupancy.npz > $R/occupancy_placement_$f.json; done
# CPU dry run of --resume (the same command twice, 304 s then 228 s):
# | cd /work/main
# | V1='ss_flow_cell_pvs=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15};preset.flow.point_grid={subdivisions:2}'
# | A=(--root /tmp/dry29 --cpu --preset tiny --workers 2 --scenes 6 --loader-workers 1 --phases prepare vae encode flow flow_quality --resume --vaes ss_vae --vae-minutes 0.6 --view-pretrain-minutes 0.6 --flows ss_flow_cell --flow-variant "$V1" --flow-minutes 1 --flow-val-every 1000 --flow-quality-chunks 2 --flow-batch none --flow-args stage.module.warmup_steps=20 --flow-quality-args=--x0-estimate)
# | /work/venv/bin/python benchmarks/full_pipeline.py "${A[@]}" > /tmp/dry29_1.out 2>&1; echo "call1 rc $?"
# | /work/venv/bin/python benchmarks/full_pipeline.py "${A[@]}" > /tmp/dry29_2.out 2>&1; echo "call2 rc $?"
# CPU dry run of --resume-flows on session 28's tiny pipeline (/tmp/dry28b), after its first run:
python benchmarks/full_pipeline.py --root /tmp/dry28b --cpu --preset tiny --workers 2 --scenes 6 --loader-workers 1 --phases flow flow_quality --resume-flows --vaes ss_vae --flows --flow-variant "ss_flow_cell_pvs=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15};preset.flow.point_grid={subdivisions:2}" --flow-variant "ss_flow_cell_pvb=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15,block_keep:0.0};preset.flow.point_grid={subdivisions:2}" --place ss_flow_cell_pvs=0 --place ss_flow_cell_pvb=1 --flow-minutes 1 --flow-val-every 4 --flow-quality-chunks 2 --flow-batch none --flow-args stage.module.warmup_steps=200 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=2
python benchmarks/step_rate.py /tmp/sr/steps_*.jsonl --out $R/step_rate.json --plot $R/step_rate.png  # the step logs of $R unzipped into /tmp/sr; recomputed after the step_rate.py fix
# CPU: the --resume dry run's second call again with --flow-horizon-minutes 20 and --phases flow (composes; rc 0):
# | cd /work/main
# | V1='ss_flow_cell_pvs=ss_flow_cell:stage.module.point_depth={keep:[0.005,1.0],outliers:0.15};preset.flow.point_grid={subdivisions:2}'
# | A=(--root /tmp/dry29 --cpu --preset tiny --workers 2 --scenes 6 --loader-workers 1 --phases flow --resume --vaes ss_vae --vae-minutes 0.6 --view-pretrain-minutes 0.6 --flows ss_flow_cell --flow-variant "$V1" --flow-minutes 1 --flow-val-every 1000 --flow-quality-chunks 2 --flow-batch none --flow-args stage.module.warmup_steps=20 --flow-quality-args=--x0-estimate --flow-horizon-minutes 20)
# | /work/venv/bin/python benchmarks/full_pipeline.py "${A[@]}" > /tmp/dry29_1.out 2>&1; echo "callH rc $?"
