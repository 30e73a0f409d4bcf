#!/usr/bin/env bash
# Session 52, call 5: the norm that makes the combine with two choices' BF16
# rows in flight at once (call 4's trace: with one choice at a time the norm
# took 149 us a MoE layer, as long as the combine and the norm it replaced).
# Its tests, then mini-bf16's 8x1024 prefill with it (default) and with the
# combine's own kernel (MELT_CUDA_COMBINE_IN_NORM=0), on off off on.
#   bash bench/results/session52_h200/call5.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
build_gpu melt-run melt-cuda-kernel-tests melt-runtime-tests >/dev/null 2>&1
echo "kernel tests: $(timeout 60 build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*ExpertCombine*' 2>&1 |
  grep -E '^\[  (PASSED|FAILED) |Failure' | paste -sd' ')"
echo "conformance: $(timeout 60 build-gpu/bin/melt-runtime-tests --gtest_filter='*MoeCombineLeft*:*ManyTokensBf16MoeExperts*' 2>&1 |
  grep -E '^\[  (PASSED|FAILED) |Failure' | paste -sd' ')"
for setting in 1 0 0 1; do
  said=$(timeout 60 env MELT_CUDA_COMBINE_IN_NORM=$setting build-gpu/bin/melt-run \
    "$carry/models/mini-bf16.melt" --random-weights --device cuda:0 --bench --warmup --repeat 3 \
    --prompt-ids "$(prompt_ids 1024)" --max-new 2 --batch 8 2>&1)
  echo "mini-bf16 MELT_CUDA_COMBINE_IN_NORM=$setting $(echo "$said" | grep -o '"prefill_tokens_per_s": [0-9.]*') md5 \
$(echo "$said" | grep -o '"generated": \[[0-9, ]*\]' | md5sum | cut -c1-8)" | tee -a "$OUT/combine-ab.txt"
done
