#!/usr/bin/env bash
# On the GPU machine: a compiler change's effect on `mini`, two artifacts
# of the same model (one compiled with the change, one without) alternating
# in one command, as prefill-ab.sh and decode-ab.sh do for a runtime
# switch. For the pair: the md5 of the greedy tokens of an 8x1024 prompt (6
# new) and of forced decoding at BATCHES (where they differ, the numerics
# moved), then ROUNDS rounds (default 2) of the 1x1024 and 8x1024 prefills
# and of forced decoding at BATCHES (default 1,64; prompt 128, 64 new
# tokens), each --bench --warmup --repeat 3 (medians of three). Lines go to
# $OUT/artifact-ab.txt as they come.
#   scripts/gpu/artifact-ab.sh NEW.melt OLD.melt   (in .device-carry/models)
set -uo pipefail
if [ $# -ne 2 ]; then
  echo "usage: scripts/gpu/artifact-ab.sh NEW.melt OLD.melt" >&2
  exit 2
fi
source "$(dirname "$0")/common.sh"
for model in "$@"; do
  if [ ! -f "$carry/models/$model" ]; then
    echo "artifact-ab.sh: error: $carry/models/$model does not exist" >&2
    exit 2
  fi
done
batches=${BATCHES:-1,64}
build_gpu melt-run
log="$out/artifact-ab.txt"
say() { echo "$*" | tee -a "$log"; }
# run MODEL ARGS...: common.sh's ab_melt without switches.
export AB_TIMEOUT=${AB_TIMEOUT:-150}
run() { ab_melt "$1" 0 "${@:2}"; }
for model in "$@"; do
  h8=$(run "$model" --prompt-ids "$(prompt_ids 1024)" --max-new 6 --batch 8 2>&1 |
    grep -E "generated" | md5sum | cut -c1-32)
  picks=$(run "$model" --forced-decode --bench --prompt-ids "$(prompt_ids 128)" \
    --max-new 16 --batch "$batches" 2>&1 | grep -o '"generated": \[[0-9, ]*\]' |
    md5sum | cut -c1-32)
  say "$model tokens md5: 8x1024 $h8, forced decode b$batches $picks"
done
for round in $(seq "${ROUNDS:-2}"); do
  for model in "$@"; do
    r=$(run "$model" --bench --warmup --repeat 3 --prompt-ids "$(prompt_ids 1024)" \
      --max-new 1 --batch 1,8 2>&1 |
      grep -o '"batch": [0-9]*\|"prefill_tokens_per_s": [0-9.]*' | paste -sd' ')
    say "$model round $round prefill: $r"
    r=$(run "$model" --forced-decode --bench --warmup --repeat 3 \
      --prompt-ids "$(prompt_ids 128)" --max-new 64 --batch "$batches" 2>&1 |
      grep -o '"batch": [0-9]*\|"decode_tokens_per_s": [0-9.]*' | paste -sd' ')
    say "$model round $round forced decode: $r"
  done
done
