#!/usr/bin/env bash
# On the GPU machine: the `mini` model (../shared/bench/BASELINES.md) with
# random weights through melt's device path (melt-run --device cuda:0
# --random-weights: DeviceRunner, F32, one sequence) beside transformers'
# own mini run (hf_baseline.py env copy hf) in the same command. The
# artifact comes from here: scripts/gpu/prepare.sh --mini compiles it into
# .device-carry/models/mini.melt. JSON lines go to $OUT (or
# build-gpu/results).
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_gpu melt-run
prompt() { python3 -c "import sys; n=int(sys.argv[1]); print(','.join(str((i * 7919) % 129280) for i in range(n)))" "$1"; }
run() { build-gpu/bin/melt-run "$carry/models/mini.melt" --random-weights \
  --device cuda:0 --bench "$@"; }
echo "== melt: mini, F32 through the device interface =="
{
  run --prompt-ids "$(prompt 128)" --max-new 64
  run --prompt-ids "$(prompt 1024)" --max-new 1
} | tee "$out/mini_melt.json"
echo "== transformers: mini =="
BASELINE_OUT=$out python3 "$carry/hf_baseline.py" env copy hf | tee "$out/mini_torch.json"
