# Session 37. Device calls from the repository root with carry [".whl"] (benchmarks/results moved out first),
# kind nvidia-h200 (the only kind lent: one H200, 16 CPU cores), timeout 598 each, each sent the moment the last
# replied; all three found the same machine:
#   call 1 (fresh, 505 s): prepare (320 rooms, 15 workers, 242 s), the 3-minute SS VAE beside the two view
#     pretrainings (default weights and the half depth weight `dhalf`), encoding; the flows skipped (no time left);
#   call 2 (warm, 586 s): ss_flow_cell (all 304 training rooms) and ss_flow_cell_r144 (the first 144) 7.2 minutes
#     side by side (1,170 / 1,171 steps at batch 8), both scored on 48 held-out chunks;
#   call 3 (warm, 586 s): both flows resumed for 7.2 minutes more (2,406 / 2,404 steps), scored again.
# 1,728 device-seconds held; the machine was given back with 68 s left. The command (all three calls) was
# benchmarks/next_device_run.sh at commit 5e1c925:
bash benchmarks/next_device_run.sh
# CPU, after the calls: each results.tar.gz extracted into callN/, live/ and DONE dropped, npz '.prob' keys stripped,
# steps_*.jsonl gzipped; call2/ and call3/ drop the files byte-identical to call1/'s; then:
R=benchmarks/results; S=$R/2026-11-29_session37; B=$R/2026-11-29_session35/call2/flow_quality_cell_floor.json
E="--entries ss_flow ss_flow@x0 ss_flow@x0pavg8 --metrics iou iou_32 fscore_1vox"
for c in 2 3; do
  python benchmarks/compare_quality.py $S/call$c/flow_quality_cell_r144.json $S/call$c/flow_quality_cell.json $E --out $S/compare_r144_vs_all_call$c.json
  python benchmarks/compare_quality.py $S/call$c/flow_quality_cell_r144.json $S/call$c/flow_quality_cell.json --first 12 $E --out $S/compare_r144_vs_all_call${c}_first12.json
  python benchmarks/compare_quality.py $S/call$c/flow_quality_cell.json $B $E --out $S/compare_all_call${c}_vs_s35_floor.json
  python benchmarks/compare_quality.py $S/call$c/flow_quality_cell.json $B --first 12 $E --out $S/compare_all_call${c}_vs_s35_floor_first12.json
done
for a in cell cell_r144; do
  python benchmarks/compare_quality.py $S/call3/flow_quality_$a.json $S/call2/flow_quality_$a.json $E --out $S/compare_${a}_call3_vs_call2.json
  for c in 2 3; do python benchmarks/occupancy_placement.py $S/call$c/flow_quality_${a}_occupancy.npz > $S/call$c/occupancy_placement_${a}.json; done
  for e in ss_flow ss_flow@x0pavg8; do n=$(echo $e | tr '@' '_')
    python benchmarks/learning_curve.py $S/call2/flow_quality_$a.json $S/call3/flow_quality_$a.json --entry $e --global-batch 8 --target 0.7 --figure $S/learning_curve_${a}_$n.png --out $S/learning_curve_${a}_$n.json
  done
done
# The pretrainings: the last validation row of call1/metrics_view_pretrain{,_dhalf}.csv (16 unseen rooms' views).
