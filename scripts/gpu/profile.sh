#!/usr/bin/env bash
# On the GPU machine: where a decode step of `mini` spends its time, kernel
# by kernel (Nsight Compute's durations, graph nodes profiled one by one),
# at the given batch sizes; the prefill (8 tokens a sequence) is left out:
# only the launches after its sampling kernel count. Clocks locked at base
# (left alone, they drop while ncu stands between kernels, and small kernels
# look several times slower than they run); caches not flushed (weights do
# not fit L2 anyway). Absolute times are the base clock's: use them for
# shares. MELT_PROFILE_PROMPT=N prefills N tokens a sequence instead (the
# decode steps then attend over N + 1 ... cached tokens, as the benchmarks'
# 128). MELT_PROFILE_OWN_CLOCKS=1 profiles at the GPU's own clocks with the
# caches flushed before each kernel instead (every weight from memory, as in
# a step; the kernels' times then add up to a little more than the step's,
# whose launches overlap).
#   scripts/gpu/profile.sh [MODEL.melt] [BATCH...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
model=${1:-mini-bf16.melt}
shift || true
batches=${*:-1 64}
build_gpu melt-run
steps=4
prompt=$(python3 -c "import sys; print(','.join(str(i % 1000 + 1) for i in range(int(sys.argv[1]))))" "${MELT_PROFILE_PROMPT:-8}")
profile() { # BATCH NEW-TOKENS CSV
  local clocks=(--clock-control base --cache-control none)
  [ "${MELT_PROFILE_OWN_CLOCKS:-}" = 1 ] &&
    clocks=(--clock-control none --cache-control all)
  ncu --csv "${clocks[@]}" --graph-profiling node \
    --metrics gpu__time_duration.sum \
    build-gpu/bin/melt-run "$carry/models/$model" --random-weights \
    --device cuda:0 --prompt-ids "$prompt" --max-new "$2" \
    --batch "$1" > "$3" 2>/dev/null || true
}
for b in $batches; do
  profile "$b" $((steps + 1)) "$out/ncu-$model-b$b.csv"
  python3 bench/cuda/kernel_times.py "$out/ncu-$model-b$b.csv" \
    --steps "$steps" --label "$model b$b" --after argmaxFinish |
    tee -a "$out/kernel_times.json" | head -n 14
done
