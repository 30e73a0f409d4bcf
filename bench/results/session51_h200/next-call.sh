#!/usr/bin/env bash
# For the next session's first GPU call (written in session 51, not run): the persistent wgmma
# attention (causal-persistent-unmeasured.diff: a block an SM over the items, the producer's warps
# 1-3 staging the next item's queries into a second buffer while the consumers work on this one;
# compiled for sm_90a here: 168 registers at launch, setmaxnreg 104 / 200, no spills, no C7515).
# build-ab.sh builds main and main + the diff, runs the patched build's kernel tests (all, within
# 300 s: a hang shows as a timeout) and device conformance, melt-bench-causal-attention of both
# alternating, mini-bf16's prefills and batch-1 decode A B B A with the greedy tokens' md5s; then
# memcheck and racecheck on the patched attention's tests and torch's SDPA at the same shapes.
#   bash bench/results/session51_h200/next-call.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
PATCH=bench/results/session51_h200/causal-persistent-unmeasured.diff TESTS=1 PREFILL=1 BATCHES=1 \
  ROUNDS=2 BENCHES=melt-bench-causal-attention timeout 480 bash scripts/gpu/build-ab.sh -- mini-bf16.melt
echo "build-ab rc=$?"
for tool in memcheck racecheck; do
  timeout 120 compute-sanitizer --tool $tool build-gpu-ab/bin/melt-cuda-kernel-tests \
    --gtest_filter='*Causal*' > "$OUT/$tool-causal.txt" 2>&1
  echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED' "$OUT/$tool-causal.txt" | paste -sd' ')"
done
timeout 120 python3 bench/cuda/causal_attention_torch.py | cut -c1-160
