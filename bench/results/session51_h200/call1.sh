#!/usr/bin/env bash
# Session 51, call 1. On the GPU machine (after `bash scripts/gpu/prepare.sh --mini` here, carry .device-carry):
# session 50's two unmeasured attention changes in one call, against main's kernel.
#   A: main; B: A + causal-l2-sets-unmeasured.diff (blocks in L2-sized sets);
#   C: B + causal-tma-unmeasured.diff (keys and values by TMA, four stages).
# Kernel tests of B and C, melt-bench-causal-attention of A, B, C alternating (two rounds),
# torch's SDPA at the same shapes, and mini-bf16's prefills of A and C.
#   bash bench/results/session51_h200/call1.sh
set -uo pipefail
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
here=bench/results/session50_h200   # the two diffs
targets=(melt-run melt-cuda-kernel-tests melt-bench-causal-attention)
configure() {
  cmake -S runtime -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DMELT_SCHEMA_HEADER_DIR="$carry/schema" \
    -DMELT_FLATBUFFERS_INCLUDE_DIR="$carry/flatbuffers" >/dev/null &&
    ninja -C "$1" "${targets[@]}" >/dev/null
}
apply() { git apply "$1" 2>/dev/null || patch -p1 < "$1" >/dev/null; }
configure build-gpu-a || { echo "build A failed"; exit 1; }
apply "$here/causal-l2-sets-unmeasured.diff" && configure build-gpu-b || { echo "build B failed"; exit 1; }
apply "$here/causal-tma-unmeasured.diff" && configure build-gpu-c || { echo "build C failed"; exit 1; }
for b in b c; do
  timeout 90 "build-gpu-$b/bin/melt-cuda-kernel-tests" --gtest_filter='*Causal*' \
    > "$out/kernel-tests-$b.txt" 2>&1
  echo "build $b causal tests rc=$? $(grep -E '^\[  (PASSED|FAILED) ' "$out/kernel-tests-$b.txt" | paste -sd' ')"
done
for round in 1 2; do
  for b in a b c; do
    "build-gpu-$b/bin/melt-bench-causal-attention" --iters 10 2>&1 | grep '"wgmma"' |
      sed "s/^/$b $round /" >> "$out/attention-bench.txt"
  done
done
grep -o '^[abc] [12] .*"queries": "[^"]*", "sequences": [0-9]*, "tokens": [0-9]*, "heads": [0-9]*, "us": [0-9.]*' \
  "$out/attention-bench.txt" | sed 's/{"what.*"queries"/"queries"/'
timeout 120 python3 bench/cuda/causal_attention_torch.py > "$out/attention-torch.json" 2>&1
cut -c1-160 "$out/attention-torch.json"
prompt=$(prompt_ids 1024)
for b in a c c a; do
  echo "$b prefill: $(timeout 150 "build-gpu-$b/bin/melt-run" "$carry/models/mini-bf16.melt" \
    --random-weights --device cuda:0 --bench --warmup --repeat 3 --prompt-ids "$prompt" \
    --max-new 1 --batch 1,8 2>&1 | grep -o '"batch": [0-9]*\|"prefill_tokens_per_s": [0-9.]*' | paste -sd' ')"
done
# Where the attention's warps wait (A and C): Nsight Compute on the first 8x1024x16 launch.
for b in a c; do
  timeout 120 ncu --clock-control none -k regex:causalAttentionWarpgroupKernel -c 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis "build-gpu-$b/bin/melt-bench-causal-attention" --iters 1 \
    > "$out/ncu-attention-$b.txt" 2>&1
  echo "ncu $b rc=$?"
done
