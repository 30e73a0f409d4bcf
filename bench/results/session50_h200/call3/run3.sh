#!/usr/bin/env bash
# Session 50, call 3: the causal attention's queries as register A fragments: its tests, the
# bench of both builds alternating (the option build keeps both operands in shared memory), torch's
# SDPA at the same shapes, mini-bf16's prefill both builds.
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/.."
source scripts/gpu/common.sh
build_gpu melt-run melt-cuda-kernel-tests melt-bench-causal-attention 2>&1 | tail -5
timeout 120 build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Causal*:*Attention*' > "$OUT/kernel-tests-attention.txt" 2>&1; echo "attention tests rc=$?"
tail -2 "$OUT/kernel-tests-attention.txt"; grep -m5 "Failure\|FAILED" "$OUT/kernel-tests-attention.txt"
timeout 120 python3 bench/cuda/causal_attention_torch.py > "$OUT/causal-attention-torch.json" 2>&1; echo "torch rc=$?"; cat "$OUT/causal-attention-torch.json" | cut -c1-200
BENCHES=melt-bench-causal-attention PREFILL=1 BATCHES=64 ROUNDS=2 timeout 420 bash scripts/gpu/build-ab.sh -DCMAKE_CUDA_FLAGS=-DMELT_CUDA_ATTENTION_SHARED_QUERIES -- mini-bf16.melt > /dev/null 2>&1; echo "ab rc=$?"
cat "$OUT/build-ab.txt"
