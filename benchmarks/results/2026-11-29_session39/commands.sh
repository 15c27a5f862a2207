# Session 39. Device calls from the repository root with carry [".whl"] (benchmarks/results moved out first),
# kind nvidia-h200 (the only kind lent: one H200, 16 CPU cores), timeout 598 each, each sent the moment the last
# replied; all three found the same machine:
#   call 1 (fresh, 475 s): prepare (320 rooms, 15 workers, 220 s), the 3-minute SS VAE beside the two view
#     pretrainings (the default at lr 1e-3 and `lr4` at 4e-3, all 304 training rooms, 246 s each), encoding;
#     the flows skipped (no time left);
#   call 2 (warm, 510 s): ss_flow_cell_w768 and ss_flow_cell_w384 6.2 minutes side by side (872 / 1,100 steps at
#     batch 8), both scored on 48 held-out chunks;
#   call 3 (warm, 510 s): both resumed for 6.2 minutes more (1,736 / 2,269 steps), scored again.
# 1,544 device-seconds held; the machine was given back with 253 s left. The command (all three calls) was
# benchmarks/next_device_run.sh at commit 735ecf9:
bash benchmarks/next_device_run.sh
# CPU, after the calls: each results.tar.gz extracted into callN/, live/ and DONE dropped, npz '.prob' keys stripped,
# steps_*.jsonl gzipped; call2/ and call3/ drop the files byte-identical to call1/'s; then:
R=benchmarks/results; S=$R/2026-11-29_session39
E="--entries ss_flow ss_flow@x0 ss_flow@x0pavg8 --metrics iou iou_32 fscore_1vox"
# Each width arm against sessions 37 and 38's ss_flow_cell (the recipe at width 512), call by call, at equal
# wall-clock (the same 6.2 + 6.2 minutes against their 7.2 + 7.2):
for a in w768 w384; do for c in 2 3; do for b in 37 38; do B=$R/2026-11-29_session$b
  python benchmarks/compare_quality.py $S/call$c/flow_quality_cell_$a.json $B/call$c/flow_quality_cell.json $E --out $S/compare_${a}_call${c}_vs_s$b.json
  python benchmarks/compare_quality.py $S/call$c/flow_quality_cell_$a.json $B/call$c/flow_quality_cell.json --first 12 $E --out $S/compare_${a}_call${c}_vs_s${b}_first12.json
done; done; done
python benchmarks/compare_quality.py $S/call3/flow_quality_cell_w768.json $S/call3/flow_quality_cell_w384.json $E --out $S/compare_w768_vs_w384_call3.json
for a in w768 w384; do for c in 2 3; do
  python benchmarks/occupancy_placement.py $S/call$c/flow_quality_cell_${a}_occupancy.npz > $S/call$c/occupancy_placement_cell_${a}.json
done; done
# ... and at equal steps: per chunk, the recipe's four scorings fitted as a + b·log2(steps), read at the arm's step
python - > $S/equal_steps_vs_recipe.json <<'PY'
# Each width arm against the recipe at the arm's own step count: per chunk, the recipe's four scorings (sessions 37
# and 38, calls 2 and 3) fitted as IoU = a + b·log2(steps), read at the arm's checkpoint step; the paired
# difference of the arm from that line.
import json
import numpy as np
R = "benchmarks/results/2026-11-29_session"
entry = "ss_flow@x0pavg8"
base = [json.load(open(f"{R}{s}/call{c}/flow_quality_cell.json"))["results"][entry] for s in (37, 38) for c in (2, 3)]
x = np.log2([b["checkpoint_step"] for b in base])
y = np.array([b["per_chunk"]["iou"] for b in base])  # [4, 48]
X = np.stack([np.ones_like(x), x], 1)
coef, *_ = np.linalg.lstsq(X, y, rcond=None)  # [2, 48]: per-chunk intercept and slope
out = {"entry": entry, "baseline": [f"session{s}/call{c}" for s in (37, 38) for c in (2, 3)],
       "baseline_steps": [int(b["checkpoint_step"]) for b in base], "arms": {}}
for arm in ("w768", "w384"):
    for c in (2, 3):
        r = json.load(open(f"{R}39/call{c}/flow_quality_cell_{arm}.json"))["results"][entry]
        step = r["checkpoint_step"]
        a = np.array(r["per_chunk"]["iou"])
        pred = coef[0] + coef[1] * np.log2(step)
        d = a - pred
        out["arms"][f"{arm}_call{c}"] = {
            "steps": int(step), "new": float(a.mean()), "recipe_at_steps": float(pred.mean()),
            "diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))), "better": int((d > 0).sum()),
            "n": len(d)}
print(json.dumps(out, indent=1))
PY
# The pretrainings: every validation row of call1/metrics_view_pretrain{,_lr4}.csv (16 unseen rooms' views),
# against the last rows of session 37's and 38's call1/metrics_view_pretrain.csv (the same default).
# CPU: the view pretraining at 8e-3 and 1.6e-2 (session 38's set-up: /tmp/fr, 120 tiny rooms at 64 px, 102 training
# rooms, 420 held-out views of 18 rooms; run_arm.sh is in session 38's commands.sh), two seeds side by side:
SEED=0 bash run_arm.sh lr8 1200 stage.module.lr=8e-3 &
SEED=1 bash run_arm.sh lr8_s1 1200 stage.module.lr=8e-3 &
wait
SEED=0 bash run_arm.sh lr16 1200 stage.module.lr=1.6e-2 &
SEED=1 bash run_arm.sh lr16_s1 1200 stage.module.lr=1.6e-2 &
wait
for n in lr8 lr8_s1 lr16 lr16_s1; do cp /tmp/fr/runs/$n/csv/version_0/metrics.csv $S/cpu_pretrain_lr/metrics_view_pretrain_$n.csv; done
# The last 253 device-seconds (a fresh H200, carry [".whl"], timeout 200): the new benchmarks/prepare_rasteriser.py
# at the task's default render.scale=2 (its defaults have since become full_pipeline.py's scale 1, 32 cameras);
# the Embree baseline finished (prepare_rasteriser_try1.json), the nvdiffrast build did not before the limit:
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gpu/*.whl && export PYTHONPATH=/tmp/site && nproc && python3 benchmarks/prepare_rasteriser.py --rooms 32 --workers 15 --out $OUT/prepare_rasteriser.json > $OUT/prepare_rasteriser.log 2>&1; tail -c 3000 $OUT/prepare_rasteriser.log
# CPU, after the first CI: 8e-3 at twice the steps (2,400; cosine decay over the run), two seeds side by side:
SEED=0 bash run_arm.sh lr8_steps2x 2400 stage.module.lr=8e-3 &
SEED=1 bash run_arm.sh lr8_steps2x_s1 2400 stage.module.lr=8e-3 &
wait
for n in lr8_steps2x lr8_steps2x_s1; do cp /tmp/fr/runs/$n/csv/version_0/metrics.csv $S/cpu_pretrain_steps/metrics_view_pretrain_$n.csv; done
