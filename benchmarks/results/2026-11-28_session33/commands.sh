# Session 33. Device calls from the repository root with carry [".whl"] (benchmarks/results moved out first),
# kind nvidia-h200-x2 (nvidia-h200-x4 was not lent this session), timeout 598 each. The same command three times,
# each sent within seconds of the last reply:
#   call 1 (fresh machine, 405 s): prepare, SS VAE + view pretraining, encode; the flow skipped (0.6 min left
#     before --deadline-minutes), so nothing scored;
#   call 2 (call 1's machine, 540 s): the flow trained 7.2 minutes on both GPUs (1,453 steps) and was scored;
#   call 3 (409 s): a fresh machine again (call 2's was taken back between the calls), so prepare, VAE and
#     encode ran again and the flow was skipped: a replicate of call 1's data phases only.
# 1,472 device-seconds held; the 299 s left could not hold a fresh machine's data phases, so the machine was
# given back.
bash benchmarks/start_run.sh /tmp/gr 578 -- python3 benchmarks/full_pipeline.py --root /tmp/gr --resume --workers 30 --scenes 320 --val-items 144:160 --loader-workers 10 --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 3 --view-pretrain-minutes 3 --view-pretrain-args stage.datamodule.batch_size=256 --view-pretrain-args stage.datamodule.num_workers=12 --place ss_vae=0 --place view_pretrain=1 --flows ss_flow_cell --place ss_flow_cell=0,1 --flow-minutes 30 --flow-horizon-minutes 15 --deadline-minutes 9.6 --reserve-minutes 2.4 --flow-val-every 1000 --flow-batch none --flow-args stage.module.symmetry_augment=true --flow-args stage.module.lr=6e-4 --flow-args stage.module.lr_new=2e-3 --flow-args stage.module.compile_blocks=true --flow-args stage.module.warmup_steps=200 --flow-args stage.module.ema_decay=0.995 --flow-args stage.module.ema_warmup=true --flow-args stage.module.objective.p_endpoint=0.1 --flow-quality-chunks 48 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=8 --flow-quality-args=--save-occupancy; [ $? = 3 ] && bash /tmp/repo/benchmarks/watch_run.sh /tmp/gr/results $OUT 578
# CPU, after the calls: each results.tar.gz extracted into callN/, live/ and DONE dropped, npz '.prob' keys
# stripped, steps_*.jsonl gzipped; call2/ keeps only the files that differ from call1/ (the same machine), call3/ drops its contact sheet (the same
# rooms, byte-identical to call1/'s); then:
R=benchmarks/results; S=$R/2026-11-28_session33; N=$S/call2/flow_quality_cell.json
python benchmarks/compare_quality.py $N $R/2026-11-28_session32/call3/flow_quality_cell_sym.json --first 12 --entries ss_flow ss_flow@x0 ss_flow@x0pavg8 --metrics iou iou_32 fscore_1vox --out $S/compare_call2_vs_s32_call3_sym.json
python benchmarks/compare_quality.py $N $R/2026-11-28_session32/call2/flow_quality_cell_sym.json --first 12 --entries ss_flow ss_flow@x0 ss_flow@x0pavg8 --metrics iou iou_32 fscore_1vox --out $S/compare_call2_vs_s32_call2_sym.json
python benchmarks/compare_quality.py $N $R/2026-11-28_session31/call3/flow_quality_cell.json --first 12 --entries ss_flow ss_flow@x0 ss_flow@x0pavg8 --metrics iou iou_32 fscore_1vox --out $S/compare_call2_vs_s31_call3.json
python benchmarks/compare_quality.py $N $R/2026-11-28_session31/call1/flow_quality_cell.json --first 12 --entries ss_flow ss_flow@x0 ss_flow@x0pavg8 --metrics iou iou_32 fscore_1vox --out $S/compare_call2_vs_s31_call1.json
python benchmarks/occupancy_placement.py $S/call2/flow_quality_cell_occupancy.npz > $S/call2/occupancy_placement_cell.json
# CPU: the across-run fit of @x0pavg8 (first 12 chunks) on log2(chunks seen, thousands) and the VAE round trip of
# the same chunks, over the views-only scorings of sessions 30-33 (values from their flow_quality_cell*.json):
python -c "
import numpy as np
d=np.array([(5.4,0.922,0.323),(30.4,0.962,0.335),(90.8,0.962,0.380),(148.4,0.962,0.393),(12.8,0.913,0.295),(14.4,0.913,0.311),(42.3,0.913,0.360),(12.1,0.913,0.300),(12.8,0.913,0.300),(37.6,0.913,0.366),(23.2,0.985,0.401)])
X=np.c_[np.ones(len(d)),np.log2(d[:,0]),d[:,1]]; y=d[:,2]; b=np.linalg.lstsq(X,y,rcond=None)[0]; r=y-X@b; s2=r@r/(len(y)-3)
print(b, np.sqrt(np.diag(s2*np.linalg.inv(X.T@X))), np.sqrt(s2))"
# CPU dry run of the next run's shape at test size (two arms on "GPUs" 0 and 1, the second on the first 2 shards;
# symmetry_augment on; both scored): 272 s, every phase rc 0, train_shards: 2 in ss_flow_cell_r144's config only.
python benchmarks/full_pipeline.py --root /tmp/dry33/gr --cpu --preset tiny --workers 2 --scenes 6 --val-items 3:4 --samples-per-shard 2 --loader-workers 1 --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 0.7 --view-pretrain-minutes 0.5 --flows ss_flow_cell --flow-variant "ss_flow_cell_r144=ss_flow_cell:stage.datamodule.train_shards=2" --place ss_flow_cell=0 --place ss_flow_cell_r144=1 --flow-minutes 1 --flow-val-every 4 --flow-batch none --flow-args stage.module.symmetry_augment=true --flow-args stage.module.warmup_steps=20 --flow-quality-chunks 2 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=2
# CPU dry run of the SS-VAE A/B (new --ss-vae-variant; the flow variant bound to it with ss_vae=short): 295 s,
# every phase rc 0; the bound flow trained and was scored on latents_ss_vae_short with ss_vae_short's VAE.
python benchmarks/full_pipeline.py --root /tmp/dry33v/gr --cpu --preset tiny --workers 2 --scenes 6 --val-items 3:4 --samples-per-shard 2 --loader-workers 1 --phases prepare vae encode flow flow_quality --vaes ss_vae --vae-minutes 0.7 --ss-vae-variant short minutes=0.3 --view-pretrain-minutes 0.5 --flows ss_flow_cell --flow-variant "ss_flow_cell_short=ss_flow_cell:ss_vae=short" --place ss_flow_cell=0 --place ss_flow_cell_short=1 --flow-minutes 1 --flow-val-every 4 --flow-batch none --flow-args stage.module.symmetry_augment=true --flow-args stage.module.warmup_steps=20 --flow-quality-chunks 2 --flow-quality-args=--x0-estimate --flow-quality-args=--x0-average=2
