#!/usr/bin/env bash
# On the GPU machine: where a decode step's host time goes beside its
# graph (MELT_PROFILE_STEPS=1: between steps, uploads, the graph's launch,
# the pick and router choices queued after it, the wait for the results;
# and each session's recordings of its decode graph, host time each),
# for mini (prepare.sh --mini) with random weights, prompt 128, 64 new
# tokens, at each batch; each run once with the per-expert load counters
# (the default: the routers' choices read back after every step) and once
# without (MELT_EXPERT_LOAD=0). The timeline of the graph itself:
# timeline.sh.
#   scripts/gpu/step-times.sh [MODEL.melt...]   (default mini-fp8, mini-bf16)
# MELT_STEP_BATCHES (default 1,64) lists the batches.
set -euo pipefail
source "$(dirname "$0")/common.sh"
models=${*:-mini-fp8.melt mini-bf16.melt}
build_gpu melt-run
prompt=$(prompt_ids 128)
for model in $models; do
  for load in 1 0; do
    log="$out/step-times-${model%.melt}-load$load.txt"
    MELT_PROFILE_STEPS=1 MELT_EXPERT_LOAD=$load build-gpu/bin/melt-run \
      "$carry/models/$model" --random-weights --device cuda:0 --bench \
      --warmup --repeat 2 --prompt-ids "$prompt" --max-new 64 \
      --batch "${MELT_STEP_BATCHES:-1,64}" > "$log" 2>&1
    # The timed sessions' lines (the warmup session's come first).
    grep -o "melt step times.*\|melt step recordings.*" "$log" |
      sed "s/^/$model expert_load=$load: /"
    grep -o '"batch": [0-9]*\|"decode_tokens_per_s": [0-9.]*' "$log" |
      paste -sd' ' | sed "s/^/$model expert_load=$load: /"
  done
done
