#!/usr/bin/env bash
# Session 52, call 1: session 51's persistent wgmma attention
# (session51_h200/causal-persistent-unmeasured.diff) against main, which now
# builds its tensor maps through one rank-generic encoder (TensorMaps.cu);
# the patched build's kernel tests and device conformance run both. Then
# where main's 8x1024 prefills spend their time now (CUPTI trace of both
# policies; session 50's call 1 is the last such trace).
#   bash bench/results/session52_h200/call1.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
bash bench/results/session51_h200/next-call.sh
timeout 150 bash scripts/gpu/prefill-kernels.sh 8 1024 mini-bf16.melt mini-fp8.melt \
  > "$OUT/prefill-kernels-log.txt" 2>&1
echo "prefill-kernels rc=$?"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
