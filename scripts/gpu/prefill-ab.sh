#!/usr/bin/env bash
# On the GPU machine: a switch's effect on `mini`'s prefill, alternating
# with the default in one command. For each model: the greedy tokens of an
# 8x1024 prompt (6 new) and of a batch of 64 (128 prompt tokens, 8 new)
# with and without the switches (their md5s must agree where the switch
# keeps the values), then ROUNDS rounds (default 2) of the 1x1024 and
# 8x1024 prefills (melt-run --bench --repeat 3: medians of three) with the
# switches and without (each line with the model's load time). Lines go to
# $OUT/prefill-ab.txt as they come.
#   scripts/gpu/prefill-ab.sh NAME=VALUE... [-- MODEL.melt...]
# e.g. scripts/gpu/prefill-ab.sh MELT_CUDA_PREFILL_MLA_QUERY=1
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: scripts/gpu/prefill-ab.sh NAME=VALUE... [-- MODEL.melt...]" >&2
  exit 2
fi
source "$(dirname "$0")/common.sh"
AB_DEFAULT_MODELS="mini-fp8.melt mini-bf16.melt" ab_arguments "$@"
build_gpu melt-run
log="$out/prefill-ab.txt"
say() { echo "$*" | tee -a "$log"; }
say "switches: ${switches[*]}"
for model in "${models[@]}"; do
  for on in 1 0; do
    h8=$(ab_melt "$model" $on --prompt-ids "$(prompt_ids 1024)" --max-new 6 --batch 8 2>&1 |
      grep -E "generated" | md5sum | cut -c1-32)
    h64=$(ab_melt "$model" $on --prompt-ids "$(prompt_ids 128)" --max-new 8 --batch 64 2>&1 |
      grep -E "generated" | md5sum | cut -c1-32)
    say "$model switches=$on tokens md5: 8x1024 $h8, 64x128 $h64"
  done
  for round in $(seq "${ROUNDS:-2}"); do
    for on in 1 0; do
      r=$(ab_melt "$model" $on --bench --warmup --repeat 3 --prompt-ids "$(prompt_ids 1024)" \
        --max-new 1 --batch 1,8 2>&1 |
        grep -o '"batch": [0-9]*\|"prefill_tokens_per_s": [0-9.]*\|"load_seconds": [0-9.]*' |
        paste -sd' ')
      say "$model round $round switches=$on prefill: $r"
    done
  done
done
