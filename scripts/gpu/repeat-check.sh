#!/usr/bin/env bash
# On the GPU machine: whether repeats of the same inputs give the same
# greedy tokens, each repeat in a session of its own (melt-run --repeat
# N: a run whose tokens differ from the run before says so on stderr). A
# kernel that reads before its data is written shows here first (session
# 34: the MLA decode's early reads, bench/results/mla_early_reads_race_s34_h200.txt).
# For each model, the default, then each NAME=VALUE on its own: the count
# of repeats that disagreed (of REPEATS - 1, default 4) at each of BATCHES
# (default 1,16,64; prompt 128, 64 new tokens), and the decode rate.
# Lines go to $OUT/repeat-check.txt.
#   scripts/gpu/repeat-check.sh [NAME=VALUE...] [-- MODEL.melt...]
# e.g. scripts/gpu/repeat-check.sh MELT_CUDA_MLA_EARLY_READS=1 -- mini-fp8.melt
set -uo pipefail
source "$(dirname "$0")/common.sh"
AB_DEFAULT_MODELS="mini-fp8.melt mini-bf16.melt" ab_arguments "$@"
build_gpu melt-run
log="$out/repeat-check.txt"
prompt=$(prompt_ids 128)
check() {
  local model=$1 label=$2
  shift 2
  local said
  said=$(timeout "${REPEAT_TIMEOUT:-120}" env "$@" build-gpu/bin/melt-run \
    "$carry/models/$model" --random-weights --device cuda:0 --bench --warmup \
    --repeat "${REPEATS:-4}" --prompt-ids "$prompt" --max-new 64 \
    --batch "${BATCHES:-1,16,64}" 2>&1)
  echo "$model $label: repeats that disagreed $(echo "$said" |
    grep -c 'other tokens than the run before'); $(echo "$said" |
    grep -o '"batch": [0-9]*\|"decode_tokens_per_s": [0-9.]*' | paste -sd' ')" |
    tee -a "$log"
}
for model in "${models[@]}"; do
  check "$model" default
  for switch in "${switches[@]}"; do
    check "$model" "$switch" "$switch"
  done
done
