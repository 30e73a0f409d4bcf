#!/usr/bin/env bash
# Session 52, call 2: the MoE combine left to the next norm (default) against
# MELT_CUDA_COMBINE_IN_NORM=0, mini's 8x1024 prefill under both policies,
# two rounds alternating (melt-run --bench --warmup --repeat 3: medians of
# three), with the greedy tokens' md5s (the same bits: they must agree).
#   bash bench/results/session52_h200/call2.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
build_gpu melt-run
log="$out/combine-ab.txt"
run() { # MODEL SETTING...: one 8x1024 prefill's rate and tokens' md5
  local model=$1
  shift
  local said
  said=$(timeout 90 env "$@" build-gpu/bin/melt-run "$carry/models/$model" --random-weights \
    --device cuda:0 --bench --warmup --repeat 3 --prompt-ids "$(prompt_ids 1024)" --max-new 2 \
    --batch 8 2>&1)
  echo "$model $* $(echo "$said" | grep -o '"prefill_tokens_per_s": [0-9.]*') md5 \
$(echo "$said" | grep -o '"generated": \[[0-9, ]*\]' | md5sum | cut -c1-8)" | tee -a "$log"
}
for model in mini-bf16.melt mini-fp8.melt; do
  run "$model" MELT_CUDA_COMBINE_IN_NORM=1
  run "$model" MELT_CUDA_COMBINE_IN_NORM=0
  run "$model" MELT_CUDA_COMBINE_IN_NORM=0
  run "$model" MELT_CUDA_COMBINE_IN_NORM=1
done
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
