#!/usr/bin/env bash
# Step time of the SS flow recipe (experiment=ss_flow_views: depth cue, cell cue, occupancy head, frozen encoder)
# against the same with the depth cue's depths from points (point_depth: simulated from the occupancy, or found
# by stereo in the views) and with the plane sweep + depth supervision, measured one after the other by
# benchmarks/flow_step.py in one call; prints a JSON comparison. ARMS_RUN="recipe stereo" runs a subset.
#   bash benchmarks/depth_cue_cost.sh OUT_DIR [DEVICE PRESET BATCH STEPS WARMUP PROFILE_STEPS]
#   bash benchmarks/depth_cue_cost.sh /tmp/cost                       # GPU: small preset, batch 8
#   bash benchmarks/depth_cue_cost.sh /tmp/cost cpu tiny 2 2 1 1      # CPU check (~1 min)
set -u
OUT=$1; D=${2:-cuda}; P=${3:-small}; B=${4:-8}; S=${5:-12}; W=${6:-4}; PS=${7:-3}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
R=(--preset "$P" --device "$D" --stages ss_flow --batches "$B" --steps "$S" --warmup "$W" --checkpoint off --views 16
   --extra "preset.flow.depth_cue={bins:64,max_depth:4.0}" --extra "preset.flow.cell_cue={subdivisions:4}"
   --extra stage.module.occupancy_aux_weight=1.0 --extra preset.image_encoder.frozen=true)
declare -A ARMS=(
  [recipe]=""
  [points]="stage.module.point_depth={keep:[0.05,1.0]}"
  [stereo]="stage.module.point_depth={source:stereo}"
  [sweep]="+preset.flow.depth_cue.sweep={channels:16} stage.module.depth_supervision_weight=1.0"
)
for arm in ${ARMS_RUN:-recipe points stereo sweep}; do
  extra=(); for e in ${ARMS[$arm]}; do extra+=(--extra "$e"); done
  prof=(); [ "$arm" != recipe ] && prof=(--profile-steps "$PS")
  "$PY" benchmarks/flow_step.py "${R[@]}" "${extra[@]}" "${prof[@]}" --out "$OUT/$arm.json" > "$OUT/$arm.log" 2>&1 \
    || { echo "depth_cue_cost.sh: the $arm arm failed, see $OUT/$arm.log" >&2; exit 1; }
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {a: json.loads((out / f"{a}.json").read_text()) for a in ("recipe", "points", "stereo", "sweep")
        if (out / f"{a}.json").is_file()}
base = rows["recipe"]["results"][0]["median_s"]
report = {"device": rows["recipe"]["device"], "baseline": "recipe", "arms": {}}
for arm, d in rows.items():
    r = d["results"][0]
    ranges = (r.get("profile") or {}).get("ranges", {})
    report["arms"][arm] = {"median_s": r["median_s"], "vs_recipe": r["median_s"] / base, "peak_mem_gb": r["peak_mem_gb"],
                           "ranges_ms": {k: v.get("device_ms") or v.get("cpu_ms") for k, v in ranges.items()
                                         if k.startswith("cond.")}}
print(json.dumps(report, indent=1))
(out / "depth_cue_cost.json").write_text(json.dumps(report, indent=1))
PY
