#!/usr/bin/env bash
# On the GPU machine: where a timed prefill of `mini` spends its time as it
# runs (nothing serialized, unlike profile-prefill.sh's MELT_PROFILE): CUPTI's
# kernel records (bench/cuda/kernel_trace.cpp) of melt-run --warmup, the
# timed session's prefill summarized by bench/cuda/kernel_timeline.py
# --burst (its span, busy and idle time, per kernel name the launches,
# running time and idle before).
# HOST=1 also records the host's CUDA calls (MELT_KERNEL_TRACE_API=1) and
# writes what the host did around the prefill (kernel_timeline.py --burst
# --host: its waits, the kernels that waited on a launch) to
# $OUT/prefill-host-MODEL-SxT.txt.
#   scripts/gpu/prefill-kernels.sh [SEQUENCES] [TOKENS] [MODEL.melt...]
# Writes $OUT/prefill-kernels-MODEL-SxT.txt, the kernels in order to
# $OUT/prefill-order-MODEL-SxT.txt and a JSON line each to
# $OUT/prefill_kernels.json.
# BASELINE=FILE (a saved prefill_kernels.json, e.g. one of bench/results/)
# then compares each kernel's time with its own there
# (bench/cuda/kernel_compare.py, into $OUT/prefill-kernels-compare.txt):
# an A/B switch does not show a loss both of its paths share.
set -euo pipefail
source "$(dirname "$0")/common.sh"
sequences=${1:-8}
tokens=${2:-1024}
shift 2 || true
models=${*:-mini-fp8.melt mini-bf16.melt}
build_gpu melt-run melt-kernel-trace
prompt=$(prompt_ids "$tokens")
for model in $models; do
  trace="$out/trace-prefill-$model.jsonl"
  rm -f "$trace"
  CUDA_INJECTION64_PATH="$root/build-gpu/lib/libmelt-kernel-trace.so" \
    MELT_KERNEL_TRACE_API="${HOST:-0}" \
    MELT_KERNEL_TRACE="$trace" build-gpu/bin/melt-run "$carry/models/$model" \
    --random-weights --device cuda:0 --warmup --prompt-ids "$prompt" \
    --max-new 1 --batch "$sequences" | grep -E "prefill" || true
  python3 bench/cuda/kernel_timeline.py "$trace" --burst --top 25 |
    tee "$out/prefill-kernels-$model-${sequences}x$tokens.txt"
  python3 bench/cuda/kernel_timeline.py "$trace" --burst --order \
    > "$out/prefill-order-$model-${sequences}x$tokens.txt"
  python3 bench/cuda/kernel_timeline.py "$trace" --burst --json |
    python3 -c "import json,sys; d=json.load(sys.stdin); d.update(model='$model', sequences=$sequences, tokens=$tokens); print(json.dumps(d))" \
    >> "$out/prefill_kernels.json"
  if [ "${HOST:-0}" = 1 ]; then
    python3 bench/cuda/kernel_timeline.py "$trace" --burst --host --top 40 \
      > "$out/prefill-host-$model-${sequences}x$tokens.txt"
  fi
  rm -f "$trace"
done
if [ -n "${BASELINE:-}" ]; then
  python3 bench/cuda/kernel_compare.py "$BASELINE" "$out/prefill_kernels.json" |
    tee "$out/prefill-kernels-compare.txt" || true
fi
