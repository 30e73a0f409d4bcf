#!/usr/bin/env bash
# On the GPU machine: the `mini` model (../shared/bench/BASELINES.md) with
# random weights in a session on the GPU (melt-run --device cuda:0
# --random-weights [--batch N]) beside transformers' own mini run
# (hf_baseline.py env copy hf) in the same command: decode at batch 1, 16
# and 64 (prompt 128, 64 new), prefill 1x1024 and 8x1024. The
# artifact comes from here: scripts/gpu/prepare.sh --mini compiles it into
# .device-carry/models/mini.melt. JSON lines go to $OUT (or
# build-gpu/results).
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_gpu melt-run
prompt() { python3 -c "import sys; n=int(sys.argv[1]); print(','.join(str((i * 7919) % 129280) for i in range(n)))" "$1"; }
run() { build-gpu/bin/melt-run "$carry/models/mini.melt" --random-weights \
  --device cuda:0 --bench "$@"; }
echo "== melt: mini on cuda:0 =="
{
  for batch in 1 16 64; do
    run --prompt-ids "$(prompt 128)" --max-new 64 --batch "$batch"
  done
  for batch in 1 8; do
    run --prompt-ids "$(prompt 1024)" --max-new 1 --batch "$batch"
  done
} | tee "$out/mini_melt.json"
[ "${MELT_SKIP_BASELINE:-}" = 1 ] && exit 0
echo "== transformers: mini =="
BASELINE_OUT=$out python3 "$carry/hf_baseline.py" env copy hf | tee "$out/mini_torch.json"
