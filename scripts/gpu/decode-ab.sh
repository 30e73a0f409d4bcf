#!/usr/bin/env bash
# On the GPU machine: a switch's effect on `mini`'s decode, alternating
# with the default in one command, on the same inputs. Every run decodes
# with melt-run --forced-decode (step s of a sequence reads its prompt's
# token s - 1, not its last pick): with random weights a pick that moves by
# one last bit sends a free generation elsewhere, and a MoE layer's time
# follows where its rows are routed, so free runs of two kernels that sum
# in different orders are not comparable (docs/CudaBackend.md, "FP8
# products of a few tokens on wgmma"). For each model: the md5 of the
# picks at each batch with and without the switches (where they differ,
# the numerics moved: compare them), then ROUNDS rounds (default 2) of the
# decode at BATCHES (default 1,16,32,64; prompt 128, 64 new tokens;
# --bench --warmup --repeat 3: medians of three) with the switches and
# without. Forced decoding is a call a step, so its rates are below
# melt-run's default (calls of 64 steps); compare them with each other.
# Lines go to $OUT/decode-ab.txt as they come.
#   scripts/gpu/decode-ab.sh NAME=VALUE... [-- MODEL.melt...]
# e.g. scripts/gpu/decode-ab.sh MELT_CUDA_FP8_SPLIT_K_ROWS=64
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: scripts/gpu/decode-ab.sh NAME=VALUE... [-- MODEL.melt...]" >&2
  exit 2
fi
source "$(dirname "$0")/common.sh"
AB_DEFAULT_MODELS=mini-fp8.melt ab_arguments "$@"
batches=${BATCHES:-1,16,32,64}
build_gpu melt-run
log="$out/decode-ab.txt"
say() { echo "$*" | tee -a "$log"; }
say "switches: ${switches[*]}"
for model in "${models[@]}"; do
  for on in 1 0; do
    picks=$(AB_TIMEOUT=150 ab_melt "$model" $on --forced-decode --bench --prompt-ids "$(prompt_ids 128)" --max-new 16 \
      --batch "$batches" 2>&1 | grep -o '"batch": [0-9]*\|"generated": \[[0-9, ]*\]' |
      paste -d' ' - - | while read -r line; do
        echo "b${line#*\"batch\": }" | sed 's/ "generated".*//' | tr -d '\n'
        echo " $(echo "$line" | md5sum | cut -c1-12)"
      done | paste -sd' ')
    say "$model switches=$on picks md5 (first sequence, 16 steps): $picks"
  done
  for round in $(seq "${ROUNDS:-2}"); do
    for on in 1 0; do
      r=$(AB_TIMEOUT=150 ab_melt "$model" $on --forced-decode --bench --warmup --repeat 3 --prompt-ids "$(prompt_ids 128)" \
        --max-new 64 --batch "$batches" 2>&1 |
        grep -o '"batch": [0-9]*\|"decode_tokens_per_s": [0-9.]*' | paste -sd' ')
      say "$model round $round switches=$on decode: $r"
    done
  done
done
