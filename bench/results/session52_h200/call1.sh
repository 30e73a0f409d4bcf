#!/usr/bin/env bash
# Session 52, call 1, on main with the MoE combine left to the next norm
# (MELT_CUDA_COMBINE_IN_NORM, on) and the tensor maps through one encoder:
# 1. session 51's persistent wgmma attention (causal-persistent-unmeasured.diff)
#    against this tree: build-ab.sh builds both, runs the patched build's
#    kernel tests and device conformance suite (this tree's new combine tests
#    among them), melt-bench-causal-attention of both alternating, and
#    mini-bf16's 8x1024 / 1x1024 prefills and batch-1 decode A B B A;
# 2. the combine in the norm against MELT_CUDA_COMBINE_IN_NORM=0 on this tree
#    (prefill-ab.sh: the greedy tokens' md5s of both, then the prefills);
# 3. memcheck and racecheck on the patched attention's tests, torch's SDPA.
#   bash bench/results/session52_h200/call1.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
PATCH=bench/results/session51_h200/causal-persistent-unmeasured.diff TESTS=1 PREFILL=1 BATCHES=1 \
  ROUNDS=2 BENCHES=melt-bench-causal-attention timeout 400 bash scripts/gpu/build-ab.sh -- mini-bf16.melt
echo "build-ab rc=$?"
ROUNDS=1 timeout 110 bash scripts/gpu/prefill-ab.sh MELT_CUDA_COMBINE_IN_NORM=0 -- mini-bf16.melt mini-fp8.melt
echo "prefill-ab rc=$?"
for tool in memcheck racecheck; do
  timeout 45 compute-sanitizer --tool $tool build-gpu-ab/bin/melt-cuda-kernel-tests \
    --gtest_filter='*Causal*' > "$OUT/$tool-causal.txt" 2>&1
  echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED' "$OUT/$tool-causal.txt" | paste -sd' ')"
done
timeout 40 python3 bench/cuda/causal_attention_torch.py | cut -c1-160
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
