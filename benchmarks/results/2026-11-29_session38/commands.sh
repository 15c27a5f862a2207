# Session 38. Device calls from the repository root with carry [".whl"] (benchmarks/results moved out first),
# kind nvidia-h200 (the only kind lent: one H200, 16 CPU cores), timeout 598 each, each sent the moment the last
# replied; all three found the same machine:
#   call 1 (fresh, 504 s): prepare (320 rooms, 15 workers, 242 s), the 3-minute SS VAE beside the two view
#     pretrainings (all 304 training rooms, and `r144`: the first 144), encoding; the flows skipped (no time left);
#   call 2 (warm, 586 s): ss_flow_cell and ss_flow_cell_dsup 7.2 minutes side by side (1,190 / 1,148 steps at
#     batch 8), both scored on 48 held-out chunks (dsup's JSON was written after the call packed its results; its
#     grids were in time, see below);
#   call 3 (warm, 581 s): both flows resumed for 7.2 minutes more (2,446 / 2,369 steps), scored again.
# 1,716 device-seconds held; the machine was given back with 81 s left. The command (all three calls) was
# benchmarks/next_device_run.sh at commit 28190de:
bash benchmarks/next_device_run.sh
# CPU, after the calls: each results.tar.gz extracted into callN/, live/ and DONE dropped, npz '.prob' keys stripped,
# steps_*.jsonl gzipped; call2/ and call3/ drop the files byte-identical to call1/'s; then:
R=benchmarks/results; S=$R/2026-11-29_session38; B=$R/2026-11-29_session37
E="--entries ss_flow ss_flow@x0 ss_flow@x0pavg8 --metrics iou iou_32 fscore_1vox"
python benchmarks/compare_quality.py $S/call3/flow_quality_cell_dsup.json $S/call3/flow_quality_cell.json $E --out $S/compare_dsup_vs_cell_call3.json
python benchmarks/compare_quality.py $S/call3/flow_quality_cell_dsup.json $S/call3/flow_quality_cell.json --first 12 $E --out $S/compare_dsup_vs_cell_call3_first12.json
for c in 2 3; do
  python benchmarks/compare_quality.py $S/call$c/flow_quality_cell.json $B/call$c/flow_quality_cell.json $E --out $S/compare_cell_call${c}_vs_s37.json
  python benchmarks/compare_quality.py $S/call$c/flow_quality_cell.json $B/call$c/flow_quality_cell.json --first 12 $E --out $S/compare_cell_call${c}_vs_s37_first12.json
done
python benchmarks/compare_quality.py $S/call3/flow_quality_cell.json $S/call2/flow_quality_cell.json $E --out $S/compare_cell_call3_vs_call2.json
for a in cell cell_dsup; do for c in 2 3; do
  python benchmarks/occupancy_placement.py $S/call$c/flow_quality_${a}_occupancy.npz > $S/call$c/occupancy_placement_${a}.json
done; done
for e in ss_flow ss_flow@x0pavg8; do n=$(echo $e | tr '@' '_')
  python benchmarks/learning_curve.py $S/call2/flow_quality_cell.json $S/call3/flow_quality_cell.json --entry $e --global-batch 8 --target 0.7 --figure $S/learning_curve_cell_$n.png --out $S/learning_curve_cell_$n.json
done
# Both sessions' four scorings of the same recipe on the same chunks, one line:
python benchmarks/learning_curve.py $B/call2/flow_quality_cell.json $B/call3/flow_quality_cell.json $S/call2/flow_quality_cell.json $S/call3/flow_quality_cell.json --entry ss_flow@x0pavg8 --global-batch 8 --target 0.7 --figure $S/learning_curve_s37_s38_x0pavg8.png --out $S/learning_curve_s37_s38_x0pavg8.json
# Call 2's dsup arm from its saved grids (its JSON was not packed in time): paired IoU per chunk against the cell
# arm, from the per-chunk IoU occupancy_placement.py wrote above
python - <<'PY' > $S/compare_dsup_vs_cell_call2_from_grids.json
# Call 2's dsup scoring wrote its grids but not its JSON before the call's results were packed: the paired IoU
# differences from occupancy_placement.py's per-chunk IoU of those grids (above; the cell arm's mean checked
# against its flow_quality.py JSON).
import json
import numpy as np
S = "benchmarks/results/2026-11-29_session38/call2"
new, base = (json.load(open(f"{S}/occupancy_placement_{a}.json")) for a in ("cell_dsup", "cell"))
headline = json.load(open(f"{S}/flow_quality_cell.json"))["headline"]
assert new["chunks"] == base["chunks"]
out = {"new": new["file"], "base": base["file"], "metric": "iou", "comparisons": {}}
for entry in ("ss_flow", "ss_flow@x0", "ss_flow@x0pavg8"):
    a, b = (np.array(r["results"][entry]["per_chunk"]["iou"]) for r in (new, base))
    assert abs(b.mean() - headline[f"{entry}/iou_mean"]) < 1e-4, entry
    for first in (None, 12):
        d = (a - b)[:first]
        out["comparisons"][entry + ("" if first is None else "_first12")] = {
            "new": float(a[:first].mean()), "base": float(b[:first].mean()), "diff": float(d.mean()),
            "se": float(d.std(ddof=1) / np.sqrt(len(d))), "better": int((d > 0).sum()), "n": len(d)}
print(json.dumps(out, indent=1))
PY
# The pretrainings: every validation row of call1/metrics_view_pretrain{,_r144}.csv (16 unseen rooms' views).
# CPU: the view pretraining at twice the steps, on session 34's CPU data (/tmp/fr: 120 rooms at the tiny preset,
# 64-px views, 102 training rooms, 420 held-out views of 18 rooms); run_arm.sh is session 34's train.py line
# (4-block width-128 ViT, 8-px patches, batch 32, cosine decay over the run's steps, seed $SEED; see session 37's
# commands.sh). The 1,200-step arms are session 36's depth_quarter{,_s1} (cpu_loss_weights/ there), same defaults.
# Two arms side by side, one core each (33 minutes):
SEED=0 bash run_arm.sh steps2x 2400 &
SEED=1 bash run_arm.sh steps2x_s1 2400 &
wait
for n in steps2x steps2x_s1; do cp /tmp/fr/runs/$n/csv/version_0/metrics.csv $S/cpu_pretrain_steps/metrics_view_pretrain_$n.csv; done
# CPU: the same at 1,200 steps with twice the learning rate (2e-3; the GPU plan's `lr2`), two seeds side by side:
SEED=0 bash run_arm.sh lr2 1200 stage.module.lr=2e-3 &
SEED=1 bash run_arm.sh lr2_s1 1200 stage.module.lr=2e-3 &
wait
mkdir -p $S/cpu_pretrain_lr
for n in lr2 lr2_s1; do cp /tmp/fr/runs/$n/csv/version_0/metrics.csv $S/cpu_pretrain_lr/metrics_view_pretrain_$n.csv; done
# ... and at four times the learning rate (4e-3), after the final CI; the plan's variant became `lr4`:
SEED=0 bash run_arm.sh lr4 1200 stage.module.lr=4e-3 &
SEED=1 bash run_arm.sh lr4_s1 1200 stage.module.lr=4e-3 &
wait
for n in lr4 lr4_s1; do cp /tmp/fr/runs/$n/csv/version_0/metrics.csv $S/cpu_pretrain_lr/metrics_view_pretrain_$n.csv; done
