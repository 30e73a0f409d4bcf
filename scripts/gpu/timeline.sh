#!/usr/bin/env bash
# On the GPU machine: where a decode step's time goes as it runs (replayed
# graphs, kernels overlapping), from CUPTI's kernel records
# (bench/cuda/kernel_trace.cpp) summarized by bench/cuda/kernel_timeline.py:
# each step's span, the time kernels run, the idle time between them, and
# per kernel its running time and the idle time before it. Unlike
# profile.sh (Nsight Compute, kernels one at a time), nothing is
# serialized. timeline-order-MODEL-bB.txt lists a step's kernels in order
# with the span each adds.
#   scripts/gpu/timeline.sh [MODEL.melt] [BATCH...]
# MELT_TIMELINE_ARGS adds melt-run options (e.g. --steps-per-call 32).
set -euo pipefail
source "$(dirname "$0")/common.sh"
model=${1:-mini-fp8.melt}
shift || true
batches=${*:-1 64}
build_gpu melt-run melt-kernel-trace
prompt=$(prompt_ids 128)
for b in $batches; do
  trace="$out/trace-$model-b$b.jsonl"
  CUDA_INJECTION64_PATH="$root/build-gpu/lib/libmelt-kernel-trace.so" \
    MELT_KERNEL_TRACE="$trace" build-gpu/bin/melt-run "$carry/models/$model" \
    --random-weights --device cuda:0 --prompt-ids "$prompt" --max-new 32 \
    --batch "$b" ${MELT_TIMELINE_ARGS:-} > /dev/null
  python3 bench/cuda/kernel_timeline.py "$trace" --json \
    > "$out/timeline-$model-b$b.json"
  python3 bench/cuda/kernel_timeline.py "$trace" --order \
    > "$out/timeline-order-$model-b$b.txt"
  python3 bench/cuda/kernel_timeline.py "$trace" | tee "$out/timeline-$model-b$b.txt" |
    head -n 40
  rm -f "$trace" # large; the summaries stay
done
