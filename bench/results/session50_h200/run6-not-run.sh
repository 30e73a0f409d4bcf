#!/usr/bin/env bash
# Session 50, call 6: the causal attention's blocks in sets of (run, head) groups whose keys fit in L2:
# its tests, then the bench with the sets (default) and without (MELT_CUDA_CAUSAL_L2_SETS=0).
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/.."
source scripts/gpu/common.sh
build_gpu melt-cuda-kernel-tests melt-bench-causal-attention 2>&1 | tail -3
build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Causal*' > "$OUT/kernel-tests-attention.txt" 2>&1; echo "attention tests rc=$?"
tail -1 "$OUT/kernel-tests-attention.txt"; grep -m3 "Failure\|FAILED" "$OUT/kernel-tests-attention.txt"
for round in 1 2; do
  build-gpu/bin/melt-bench-causal-attention --iters 10 2>&1 | grep '"wgmma"' | sed "s/^/sets $round /" | tee -a "$OUT/bench.txt" | grep -o '"queries": "[^"]*", "sequences": [0-9]*, "tokens": [0-9]*, "heads": [0-9]*, "us": [0-9.]*' | paste -sd'|'
  MELT_CUDA_CAUSAL_L2_SETS=0 build-gpu/bin/melt-bench-causal-attention --iters 10 2>&1 | grep '"wgmma"' | sed "s/^/nosets $round /" | tee -a "$OUT/bench.txt" | grep -o '"queries": "[^"]*", "sequences": [0-9]*, "tokens": [0-9]*, "heads": [0-9]*, "us": [0-9.]*' | paste -sd'|'
done
