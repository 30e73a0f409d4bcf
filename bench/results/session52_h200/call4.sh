#!/usr/bin/env bash
# Session 52, call 4: where the final tree's 8x1024 prefills spend their time
# (CUPTI trace of both policies, scripts/gpu/prefill-kernels.sh; session 50's
# call 1 was the last such trace): the breakdown the next session starts from.
#   bash bench/results/session52_h200/call4.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
timeout 240 bash scripts/gpu/prefill-kernels.sh 8 1024 mini-bf16.melt mini-fp8.melt \
  > "$OUT/prefill-kernels-log.txt" 2>&1
echo "prefill-kernels rc=$?"
head -32 "$OUT"/prefill-kernels-mini-bf16.melt-8x1024.txt
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
