#!/usr/bin/env bash
# Start a long command in the background on the device machine, then follow it with watch_run.sh.
#   bash benchmarks/start_run.sh ROOT SECONDS -- COMMAND [ARG ...]
# Installs the carried wheels (.whl/gpu, see ../shared/tools/gpu-wheels.sh; START_RUN_WHEELS=none: none) into
# /tmp/site, copies the repository to START_RUN_REPO (/tmp/repo: the device tool rewrites the working tree at every
# call, and a job importing meanwhile fails), starts COMMAND there under setsid with its output in
# ROOT/pipeline.out, and watches ROOT/results for SECONDS, leaving results.tar.gz (past 15 MB: its parts) in $OUT
# (default ROOT/out). Later calls: `bash /tmp/repo/benchmarks/watch_run.sh ROOT/results $OUT SECONDS`, issued at
# once (an idle machine is released after 30 s; in sessions 26-30 the next call often came later than that and
# found a fresh machine; in session 31 three calls of one `--resume` command, each sent as soon as the last
# returned, all found the same machine; in session 36 two calls of a 1,300-character command found fresh machines:
# keep the command in a script, benchmarks/next_device_run.sh, so the next call is one short line. Plan each call
# to leave a scored result in case the next one does not).
# A second start while the first command still runs is refused (exit status 3). The device tool copies at most
# 64 MiB of working tree: move benchmarks/results/ (earlier runs' files, not needed there) out of the checkout for
# the calls and back afterwards.
set -u
ROOT=$1; T=$2; shift 2
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: start_run.sh ROOT SECONDS -- COMMAND [ARG ...]" >&2; exit 2; }
if [ -f "$ROOT/run.pid" ] && kill -0 "$(cat "$ROOT/run.pid")" 2>/dev/null; then
  echo "start_run.sh: a run started from $ROOT is still going (pid $(cat "$ROOT/run.pid")); watch it instead" >&2
  exit 3
fi
WHEELS=${START_RUN_WHEELS:-.whl/gpu}  # "none": install nothing (a machine that has every package)
if [ "$WHEELS" != none ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || { echo "start_run.sh: installing the wheels of $WHEELS failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
REPO=${START_RUN_REPO:-/tmp/repo}
rm -rf "$REPO" && cp -r . "$REPO" && cd "$REPO" || exit 1
mkdir -p "$ROOT/results" && rm -f "$ROOT/results/DONE"  # a finished earlier run's marker would end the watch
setsid nohup "$@" > "$ROOT/pipeline.out" 2>&1 < /dev/null &
echo $! > "$ROOT/run.pid"
sleep 2
bash "$REPO/benchmarks/watch_run.sh" "$ROOT/results" "${OUT:-$ROOT/out}" "$T"
