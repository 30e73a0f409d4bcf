#!/usr/bin/env bash
# Session 50, call 1: where mini's prefill (bf16, fp8 8x1024) and fp8 batch-1 decode spend their time now.
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/.."
bash scripts/gpu/prefill-kernels.sh 8 1024 mini-bf16.melt mini-fp8.melt > "$OUT/prefill-kernels-log.txt" 2>&1; echo "prefill rc=$?"
bash scripts/gpu/timeline.sh mini-fp8.melt 1 > "$OUT/timeline-log.txt" 2>&1; echo "timeline rc=$?"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
