#!/usr/bin/env bash
# Follow a background `benchmarks/full_pipeline.py` run for up to SECONDS (the device tool's calls last at most
# 10 minutes, the pipeline longer), then copy what it has produced so far to OUT_DIR.
#   bash benchmarks/watch_run.sh RESULTS_DIR OUT_DIR [SECONDS]
# benchmarks/start_run.sh starts the pipeline and makes the first watch call. It runs the pipeline from a copy of
# the repository (/tmp/repo): the device tool copies the working tree again at every call, and a job that imports
# while that happens fails (session 6: a flow died with ModuleNotFoundError 13 s after its start). Issue the next
# watch call at once: the device releases an idle machine after 30 s and the run dies with it (sessions 8 and 16).
R=$1; OUT=$2; T=${3:-560}
# A run that dies without writing DONE (session 35: an argument error at once) ends the watch, with its own output
# shown: waiting out SECONDS for it had spent 9 minutes of device time.
PID_FILE=$R/../run.pid; PIPE_OUT=$R/../pipeline.out
end=$(( $(date +%s) + T )); seen=0; died=0
while [ "$(date +%s)" -lt "$end" ] && [ ! -f "$R/DONE" ]; do
  sleep 5
  n=$(wc -l < "$R/progress.log" 2>/dev/null || echo 0)
  if [ "$n" -gt "$seen" ]; then tail -n +"$((seen + 1))" "$R/progress.log"; seen=$n; fi
  if [ -f "$PID_FILE" ] && ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null && [ ! -f "$R/DONE" ]; then died=1; break; fi
done
tail -n +"$((seen + 1))" "$R/progress.log" 2>/dev/null
if [ "$died" = 1 ]; then
  echo "watch_run.sh: the run (pid $(cat "$PID_FILE")) ended without $R/DONE; the last of $PIPE_OUT:"
  tail -n 20 "$PIPE_OUT" 2>/dev/null
fi
[ -f "$PIPE_OUT" ] && cp "$PIPE_OUT" "$R/pipeline.out"
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
for f in "$R"/metrics_*.csv; do [ -f "$f" ] && echo "$(basename "$f"): $(head -1 "$f" | cut -c1-200)" && tail -2 "$f" | cut -c1-300; done
for f in "$R"/*.log; do case "$f" in *progress.log) continue;; esac
  grep -h "time budget\|Error\|error:\|Traceback" "$f" 2>/dev/null | tail -3 | sed "s|^|$(basename "$f"): |"; done
# Live metrics of runs still training (the pipeline copies them into RESULTS only when a phase ends): if the
# machine is lost between calls, the last copy still has every validation so far.
mkdir -p "$R/live"
for f in "$R"/../logs/train/runs/*/csv/version_*/metrics.csv; do
  [ -f "$f" ] && cp "$f" "$R/live/metrics_$(basename "$(dirname "$(dirname "$(dirname "$f")")")").csv"; done
for f in "$R"/../logs/train/runs/*/rank_0_steps.jsonl; do  # every step's time: the start-up ramp so far
  [ -f "$f" ] && cp "$f" "$R/live/steps_$(basename "$(dirname "$f")").jsonl"; done
mkdir -p "$OUT" && rm -f "$OUT"/results.tar.gz* && tar czf "$OUT/results.tar.gz" -C "$R" . 2>/dev/null
# The device tool brings back files up to 16 MiB (session 24's archive, 16.9 MB, did not come back): a larger
# archive is split into parts; `cat results.tar.gz.part* | tar xz` rejoins them.
PART=${WATCH_RUN_PART_BYTES:-15000000}
if [ "$(stat -c %s "$OUT/results.tar.gz")" -gt "$PART" ]; then
  split -b "$PART" -d "$OUT/results.tar.gz" "$OUT/results.tar.gz.part" && rm "$OUT/results.tar.gz"
fi
ls -la "$OUT"
