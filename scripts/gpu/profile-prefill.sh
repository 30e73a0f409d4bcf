#!/usr/bin/env bash
# On the GPU machine: where a prefill of `mini` spends its time, by kernel
# kind (MELT_PROFILE=1: the device synchronized after each kernel), for the
# given artifacts, after an untimed warm-up session (cuBLASLt's first-call
# planning stays out of the figures).
#   scripts/gpu/profile-prefill.sh [SEQUENCES] [TOKENS] [MODEL.melt...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
sequences=${1:-8}
tokens=${2:-1024}
shift 2 || true
models=${*:-mini-bf16.melt mini-fp8.melt}
build_gpu melt-run
prompt=$(prompt_ids "$tokens")
for model in $models; do
  echo "== $model: prefill $sequences x $tokens =="
  # The warm-up session's profile comes first; the timed session's last.
  MELT_PROFILE=1 build-gpu/bin/melt-run "$carry/models/$model" \
    --random-weights --device cuda:0 --warmup --prompt-ids "$prompt" \
    --max-new 1 --batch "$sequences" 2>&1 |
    awk '/^melt profile/{block = ""} {block = block $0 "\n"} /prefill:/{print} END{printf "%s", block}' |
    tee -a "$out/profile_prefill.txt"
done
