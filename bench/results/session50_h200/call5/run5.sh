#!/usr/bin/env bash
# Session 50, call 5: the causal attention's warpgroups taking turns at their products: its tests,
# the bench of both builds (the option build without the turns), mini-bf16's prefill both builds.
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/.."
source scripts/gpu/common.sh
build_gpu melt-run melt-cuda-kernel-tests melt-bench-causal-attention 2>&1 | tail -5
timeout 60 build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Causal*:*Attention*' > "$OUT/kernel-tests-attention.txt" 2>&1; echo "attention tests rc=$?"
tail -2 "$OUT/kernel-tests-attention.txt"; grep -m5 "Failure\|FAILED" "$OUT/kernel-tests-attention.txt"
BENCHES=melt-bench-causal-attention PREFILL=1 BATCHES=64 ROUNDS=1 timeout 300 bash scripts/gpu/build-ab.sh -DCMAKE_CUDA_FLAGS=-DMELT_CUDA_ATTENTION_NO_TURNS -- mini-bf16.melt > /dev/null 2>&1; echo "ab rc=$?"
cat "$OUT/build-ab.txt"
