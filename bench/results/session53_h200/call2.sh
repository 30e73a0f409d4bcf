#!/usr/bin/env bash
# Session 53, call 2. Call 1 showed the angles made once per token into a
# table (causalRopeAngles, now removed) slower than computed (205 against
# 189 us at 8x1024x16), and the attention's source counters stalls on its
# queries' loads, the rope part's a round trip per chunk a thread takes. Now:
# (a) the projected BF16 queries' rope part rotated once for every head
#     into BF16 rows of its own (causalRotateQueryRope,
#     MELT_CUDA_CAUSAL_ROPE_AHEAD, on), the attention reading them as split
#     rows: the same bits;
# (b) the wgmma attention's rope loads all out at once, before the nope
#     ones (RopeChunks); rope-loads-in-turn.diff takes this back.
# 1. the default build's kernel tests (causal, MLA) and device conformance;
# 2. build-ab.sh PATCH=rope-loads-in-turn.diff: melt-bench-causal-attention
#    of both builds alternating, mini-bf16's prefills and batch-1 decode A B B A;
# 3. prefill-ab.sh MELT_CUDA_CAUSAL_ROPE_AHEAD=0: tokens' md5s, then the
#    prefills of mini-bf16 and mini-fp8.
#   bash bench/results/session53_h200/call2.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
build_gpu melt-run melt-cuda-kernel-tests melt-runtime-tests melt-bench-causal-attention
echo "kernel tests: $(timeout 120 build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Causal*:*Mla*' 2>&1 |
  tee "$OUT/kernel-tests.txt" | grep -E '^\[  (PASSED|FAILED) |Failure' | paste -sd' ')"
echo "conformance: $(timeout 200 build-gpu/bin/melt-runtime-tests --gtest_filter='*Conformance*' 2>&1 |
  tee "$OUT/conformance.txt" | grep -E '^\[  (PASSED|FAILED) |Failure' | paste -sd' ')"
PATCH=bench/results/session53_h200/rope-loads-in-turn.diff PREFILL=1 BATCHES=1 ROUNDS=2 \
  BENCHES=melt-bench-causal-attention timeout 330 bash scripts/gpu/build-ab.sh -- mini-bf16.melt
echo "build-ab rc=$?"
ROUNDS=1 timeout 175 bash scripts/gpu/prefill-ab.sh MELT_CUDA_CAUSAL_ROPE_AHEAD=0 -- mini-bf16.melt mini-fp8.melt
echo "prefill-ab rc=$?"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
