#!/bin/bash
# The next session's planned device command, kept here so that each `run` call is one short line:
#   run(command="bash benchmarks/next_device_run.sh", carry=[".whl"], timeout_s=598, kind="nvidia-h200")
# A machine stays warm only 30 s after a call; session 36 lost it between every pair of its three calls while the
# ~1,300-character command was being written out, so every call started fresh and no flow trained. Send the same
# short line again the moment a call replies: full_pipeline.py --resume skips what the warm machine has already
# done (on a fresh machine it repeats the data phases, about 480 s). Move benchmarks/results out first.
#
# Plan (RESULTS.md, session 38): the flow's capacity, never varied so far. Session 38 repeated session 37's recipe
# to within 0.001 IoU (paired s.e. 0.006) at both lengths, so both arms are new and are compared with those two
# sessions' ss_flow_cell scorings (same rooms: prepare is deterministic): `w768` (width 768, 12 heads: 111 M
# trainable weights against 51 M) and `w384` (width 384, 6 heads), both batch 8, side by side as the recipe ran;
# equal wall-clock is the budget's comparison, equal steps (on the recipe's +0.024 per doubling) the per-step one.
# Beside the view pretraining, the same at four times its learning rate (`lr4`; no flow loads it): on the CPU that
# bought most of what twice the steps did (session 38), and the 3-minute pretraining is short of steps. Call 1
# (fresh): data phases; calls 2 and 3 (warm): both flows 6.2 minutes side by side, scored after each. Scoring is
# kept 3.4 minutes, not 2.4: session 38's call 2 ended 4 s before its second 51 M flow was scored (81 s), and the
# 111 M one will take longer. The learning rate's horizon shrinks with the training (13 of 14.4 minutes before,
# 11.2 of 12.4 now).
set -u
cd "$(dirname "$0")/.."
R=/tmp/gr  # the run's root on the device: data, runs, results
ARGS=(--root "$R" --resume
  --workers 15 --scenes 320 --val-items 144:160 --loader-workers 5
  --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 3
  --view-pretrain-minutes 3 --view-pretrain-args stage.datamodule.batch_size=256
  --view-pretrain-args stage.datamodule.num_workers=4
  --view-pretrain-variant lr4 stage.module.lr=4e-3
  --flows --flow-variant "ss_flow_cell_w768=ss_flow_cell:preset.flow.width=768;preset.flow.num_heads=12"
  --flow-variant "ss_flow_cell_w384=ss_flow_cell:preset.flow.width=384;preset.flow.num_heads=6"
  --flow-minutes 30 --flow-horizon-minutes 11.2 --deadline-minutes 9.6 --reserve-minutes 3.4
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
