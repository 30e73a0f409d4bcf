#!/usr/bin/env bash
# Session 53, call 3. Call 2 disagreed with itself on the query rope rotated
# ahead (MELT_CUDA_CAUSAL_ROPE_AHEAD): the benchmark had the rotating kernel
# and the attention 194 us against 185 rotating in the attention, mini-bf16's
# 8x1024 prefill (one round) 449.0k against 437.0k tokens/s. Now:
# 1. melt-bench-causal-attention with the rotating kernel and the attention
#    on the rotated rows timed apart;
# 2. the traced 8x1024 bf16 prefill with the switch on and off
#    (prefill-kernels.sh: the attention's and the rotating kernel's times);
# 3. mini-bf16's 8x1024 prefill, on off off on;
# 4. the tests of the tree (kernel tests: causal, MLA, expert combine;
#    the device conformance suite): session 52's review mended.
# SHORT=1 leaves out the traces (2).
#   bash bench/results/session53_h200/call3.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
build_gpu melt-run melt-kernel-trace melt-bench-causal-attention melt-cuda-kernel-tests melt-runtime-tests
timeout 90 build-gpu/bin/melt-bench-causal-attention > "$OUT/causal-bench.txt" 2>&1
echo "bench rc=$?"
grep -E '"heads": 16' "$OUT/causal-bench.txt" | grep -v mma.sync | cut -c1-170
for ahead in $([ -n "${SHORT:-}" ] || echo 1 0); do
  mkdir -p "$OUT/ahead$ahead"
  OUT="$OUT/ahead$ahead" MELT_CUDA_CAUSAL_ROPE_AHEAD=$ahead timeout 100 \
    bash scripts/gpu/prefill-kernels.sh 8 1024 mini-bf16.melt > "$OUT/ahead$ahead/log.txt" 2>&1
  echo "trace ahead=$ahead rc=$?"
  head -1 "$OUT/ahead$ahead/prefill-kernels-mini-bf16.melt-8x1024.txt"
  grep -E "causalAttention|rotateQueryRope" "$OUT/ahead$ahead/prefill-kernels-mini-bf16.melt-8x1024.txt" | head -2
done
for ahead in 1 0 0 1; do
  said=$(timeout 40 env MELT_CUDA_CAUSAL_ROPE_AHEAD=$ahead build-gpu/bin/melt-run \
    "$carry/models/mini-bf16.melt" --random-weights --device cuda:0 --bench --warmup --repeat 3 \
    --prompt-ids "$(prompt_ids 1024)" --max-new 2 --batch 8 2>&1)
  echo "mini-bf16 ROPE_AHEAD=$ahead $(echo "$said" | grep -o '"prefill_tokens_per_s": [0-9.]*') md5 \
$(echo "$said" | grep -o '"generated": \[[0-9, ]*\]' | md5sum | cut -c1-8)" | tee -a "$OUT/ahead-ab.txt"
done
echo "kernel tests: $(timeout 60 build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Causal*:*Mla*:*ExpertCombine*' 2>&1 |
  tee "$OUT/kernel-tests.txt" | grep -E '^\[  (PASSED|FAILED) |Failure' | paste -sd' ')"
echo "conformance: $(timeout 80 build-gpu/bin/melt-runtime-tests --gtest_filter='*Conformance*' 2>&1 |
  tee "$OUT/conformance.txt" | grep -E '^\[  (PASSED|FAILED) |Failure' | paste -sd' ')"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
