# Session 25, one idle NVIDIA H100 80GB HBM3 (nvidia-h100-x1, torch 2.11+cu130): the SS flow's real training step
# (benchmarks/flow_step.py, small preset, batch 8, up to 16 views, 16 distinct batches, 10 timed steps after 3,
# bf16), four configurations one after the other in one call (219 s):
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gpu/*.whl; export PYTHONPATH=/tmp/site
S="--preset small --device cuda --stages ss_flow --batches 8 --steps 10 --warmup 3 --checkpoint off --views 16 --distinct-batches 16 --extra preset.flow.depth_cue={bins:64,max_depth:4.0} --extra preset.flow.cell_cue={subdivisions:4} --extra stage.module.occupancy_aux_weight=1.0 --extra preset.image_encoder.frozen=true"
G="--extra preset.flow.point_grid={subdivisions:4}"
run(){ n=$1; shift; timeout 130 python3 benchmarks/flow_step.py $S "$@" --out $OUT/$n.json > $OUT/$n.log 2>&1; }
run recipe
run stereo --extra "stage.module.point_depth={source:stereo,stereo_refine:true,stereo_consistent:1}" $G --profile-steps 3
run grid --extra "stage.module.point_depth={keep:[0.005,1.0],outliers:0.15}" $G
run compile --extra stage.module.compile_blocks=true
