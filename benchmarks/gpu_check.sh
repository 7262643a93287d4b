#!/usr/bin/env bash
# The checks that need an accelerator, as one short script (DEV=cuda by default):
# no per-step host sync (torch's sync debug mode), a headless run, NaN found at a
# flush, checkpoint + resume, the overhead ratios on that device, what telemetry costs,
# and a 2-rank torchrun job whose ticks must add no host sync.
#   bash benchmarks/gpu_check.sh            # on a machine with a GPU
#   DEV=cpu PY=.venv/bin/python ROUNDS=1 bash benchmarks/gpu_check.sh   # a dry run
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
DEV=${DEV:-cuda}
PY=${PY:-python3}
RUNS=$(mktemp -d)
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY -c "import textual" 2>/dev/null && echo "textual present" || echo "no textual (console variants skipped)"
echo "== 1 no per-step host sync on $DEV (sync debug mode)"
timeout 100 $PY benchmarks/gpu_sync.py $DEV 2>&1 | tail -12
echo "== 1b amp bf16 + clip + accumulate 4 on $DEV: host syncs, then the engine vs a hand-written loop"
timeout 150 $PY benchmarks/gpu_sync.py $DEV vgg+step none 2>&1 | grep -v "^steer" | tail -6
timeout 200 $PY -m benchmarks.step_features --device $DEV --amp bf16 --rounds ${ROUNDS:-5} 2>&1 | tail -3
echo "== 1c the per-group signals at every step on $DEV: host syncs; then their cost, K from the budget"
timeout 120 $PY benchmarks/gpu_sync.py $DEV vgg+signals resnet_adam+signals none 2>&1 | grep -v "^steer" | tail -8
timeout 200 $PY -m benchmarks.signals --device $DEV --threads default --rounds ${ROUNDS:-3} --pairs 10 2>&1 | tail -9
echo "== 2 vgg headless on $DEV"
timeout 60 $PY -m tuiconsole run sample_models/vgg.py --headless --max-steps 400 --device $DEV --log-every 200 --run-dir "$RUNS/r1" < /dev/null 2>&1 | tail -5
echo "== 3 nan on $DEV (batch 38 is NaN; stdin not a tty -> stop)"
timeout 60 $PY -m tuiconsole run benchmarks/scripts/nan_at_38.py --headless --device $DEV --epochs 1 --run-dir "$RUNS/r2" < /dev/null 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"
echo "== 4 checkpoint + resume on $DEV"
timeout 60 $PY -m tuiconsole run sample_models/mlp.py --headless --device $DEV --max-steps 100 --run-dir "$RUNS/r3" < /dev/null 2>&1 | tail -2
timeout 60 $PY -m tuiconsole run sample_models/mlp.py --headless --device $DEV --resume "$RUNS/r3/checkpoint-step100.pt" --max-steps 150 --run-dir "$RUNS/r4" < /dev/null 2>&1 | grep -E "resumed|finished|error" | head -3
echo "== 5 overhead on $DEV"
timeout 150 $PY -m benchmarks.overhead --device $DEV --no-peers --rounds ${ROUNDS:-5} 2>&1 | tail -5
echo "== 6 telemetry on vs off on $DEV"
timeout 150 $PY -m benchmarks.telemetry --device $DEV --rounds ${ROUNDS:-3} --pairs 10 2>&1 | tail -12
echo "== 7 torchrun: the ticks between 2 ranks add no host sync (both ranks on this GPU, gloo)"
TUICONSOLE_DIST_BACKEND=${DIST_BACKEND:-gloo} timeout 150 $PY -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/gpu_ddp_sync.py $DEV 200 2>&1 | grep -E "rank 0|Error|error" | head -5
