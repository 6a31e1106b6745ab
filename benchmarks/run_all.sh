#!/bin/bash
# Every CPU figure of issues 2, 6, 7 and 8, one JSON-lines file per run, then the tables:
#
#   benchmarks/run_all.sh [OUT_DIR]        (default benchmarks/results; STEPS=10 by default)
#   python benchmarks/table.py OUT_DIR
#
# Runs one heavy benchmark at a time (the machine is shared: each kind waits for a quiet
# moment before timing, and ours-vs-torch ratios come from the same run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
run() { local name=$1; shift; echo "== $name" >&2; python launch/benchmark.py "$@" > "$OUT/$name.jsonl"; }

# Issues 7 / 8: the three training steps against the PyTorch reference, in three
# alternating rounds (medians over rounds resist the machine's speed drifting).
for pair in resnet56:resnet20 resnet20:resnet20; do
  for batch in 64 128; do
    t=${pair%:*}; s=${pair#*:}
    run "steps_${t}_${s}_b${batch}" --teacher="$t" --student="$s" --batch="$batch" \
      --kinds=student,kd,oracle --conv_impl=default,cpu --steps="$STEPS" --peak --compare-torch \
      --rounds=3
  done
done

# Issue 7: what each change bought (stock XLA; chunked weight gradients alone; XLA's
# multi-threaded convolutions alone; both = conv_impl 'chunked'; plus paired narrow
# convolutions = 'cpu', the default on one CPU device).
run ablation_resnet56_resnet20_b64 --teacher=resnet56 --student=resnet20 --batch=64 \
  --kinds=student,oracle --conv_impl=default,chunked/noopts,default/cpuopts,chunked,cpu \
  --steps="$STEPS" --peak

# Issue 2: reinforce vs one teacher forward.
for t in resnet20 resnet56; do
  for batch in 64 128; do
    run "reinforce_${t}_b${batch}" --teacher="$t" --batch="$batch" --kinds=forward,reinforce \
      --conv_impl=default,chunked,cpu --steps="$STEPS"
  done
done

# Issue 8: the input pipeline alone.
for batch in 64 128; do
  run "pipeline_b${batch}" --batch="$batch" --kinds=pipeline
done

# Issue 6: the oracle step on 1/2/4/8 simulated devices at a fixed global batch.
XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  run devices_resnet56_resnet20_b64 --teacher=resnet56 --student=resnet20 --batch=64 \
    --kinds=oracle --conv_impl=default,cpu --devices=1,2,4,8 --steps=5

python benchmarks/table.py "$OUT"
