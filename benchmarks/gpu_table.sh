#!/bin/bash
# The GPU table in under 8 minutes, for a session lent a device:
#   1. the oracle-KD step (resnet56 -> resnet20, CIFAR-100 shape, batch 64) against
#      torch_reference.py on CUDA, in the same run;
#   2. population scaling: runs/hour of P = 1, 2, 4, 8, 16 resnet20 students (teacher
#      resnet56) against P runs one after another (the issue's goal: >= 5x at P = 8).
#
#   benchmarks/gpu_table.sh [OUT_DIR]        (default benchmarks/results/gpu)
#   STEPS=2 SIZES=1,2 SHAPE=digits benchmarks/gpu_table.sh /tmp/out   # a quick CPU check
#
# Each part has its own time limit, so the whole script ends within 8 minutes even if a
# part stalls; a part that times out leaves the lines it printed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
STEPS=${STEPS:-20}
SIZES=${SIZES:-1,2,4,8,16}
SHAPE=${SHAPE:-cifar}
mkdir -p "$OUT"
if [ "$SHAPE" = cifar ]; then MODELS=(--teacher=resnet56 --student=resnet20 --classes=100)
else MODELS=(--teacher=resnet20 --student=resnet8 --classes=10); fi
status=0
timeout 200 python launch/benchmark.py "${MODELS[@]}" --batch=64 --kinds=oracle \
  --steps="$STEPS" --compare-torch --quiet-wait=5 > "$OUT/oracle_vs_torch.jsonl" || status=$?
timeout 260 python launch/benchmark.py population --shape="$SHAPE" --sizes="$SIZES" \
  --steps="$STEPS" > "$OUT/population_$SHAPE.jsonl" || status=$?
cat "$OUT"/*.jsonl
exit $status
