#!/bin/bash
# The next session's planned device command, kept here so that each `run` call is one short line:
#   run(command="bash benchmarks/next_device_run.sh", carry=[".whl"], timeout_s=598, kind="nvidia-h200")
# A machine stays warm only 30 s after a call; session 36 lost it between every pair of its three calls while the
# ~1,300-character command was being written out, so every call started fresh and no flow trained. Send the same
# short line again the moment a call replies: full_pipeline.py --resume skips what the warm machine has already
# done (on a fresh machine it repeats the data phases, about 480 s). Move benchmarks/results out first.
#
# Plan (RESULTS.md, session 37): the depth head fine-tuned on the chunks' depths inside the flow
# (depth_supervision_weight 1.0, session 22's +0.018 at step 1,000 before the floor rays) against the recipe, both
# on all 304 rooms. The recipe's arm repeats session 37's ss_flow_cell on the same data (prepare is deterministic),
# so it also measures how far one recipe lands from one session to the next. Beside the view pretraining, the same
# on 144 of the 304 training rooms (no flow loads it): how the encoder's held-out depth scales with rooms on the GPU
# (session 37, CPU: 26 / 51 / 102 rooms gave 0.286 / 0.252 / 0.234, seed means). Call 1 (fresh): data phases;
# calls 2 and 3 (warm): both flows 7.2 minutes side by side, scored after each (session 37: 1,170 and 2,406 steps).
set -u
cd "$(dirname "$0")/.."
R=/tmp/gr  # the run's root on the device: data, runs, results
ARGS=(--root "$R" --resume
  --workers 15 --scenes 320 --val-items 144:160 --loader-workers 5
  --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 3
  --view-pretrain-minutes 3 --view-pretrain-args stage.datamodule.batch_size=256
  --view-pretrain-args stage.datamodule.num_workers=4
  --view-pretrain-variant r144 stage.datamodule.train_scenes=144
  --flows ss_flow_cell --flow-variant "ss_flow_cell_dsup=ss_flow_cell:stage.module.depth_supervision_weight=1.0"
  --flow-minutes 30 --flow-horizon-minutes 13 --deadline-minutes 9.6 --reserve-minutes 2.4
  --flow-val-every 100000 --flow-batch none
  --flow-args stage.module.symmetry_augment=true --flow-args stage.module.lr=3e-4
  --flow-args stage.module.lr_new=1e-3 --flow-args stage.module.compile_blocks=true
  --flow-args stage.module.warmup_steps=200 --flow-args stage.module.ema_decay=0.995
  --flow-args stage.module.ema_warmup=true --flow-args stage.module.objective.p_endpoint=0.1
  --flow-quality-chunks 48 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=8
  --flow-quality-args=--save-occupancy)
# NEXT_RUN_PRINT_ARGS=1: print full_pipeline.py's arguments, one per line, and stop (a test parses them, so a
# planned command that full_pipeline.py would refuse is caught here rather than on the machine, as in session 35)
if [ "${NEXT_RUN_PRINT_ARGS:-0}" = 1 ]; then printf '%s\n' "${ARGS[@]}"; exit 0; fi
bash benchmarks/start_run.sh "$R" 578 -- python3 benchmarks/full_pipeline.py "${ARGS[@]}"
rc=$?
# start_run.sh returns 3 when the run is still going at its limit: watch it to the call's end, then hand back
# its results ($OUT is the device tool's return folder).
[ $rc = 3 ] && bash /tmp/repo/benchmarks/watch_run.sh "$R/results" "$OUT" 578
