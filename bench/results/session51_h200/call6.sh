#!/usr/bin/env bash
# Session 51, call 6: where the wgmma causal attention's warps wait (main's kernel, mini's first
# 8x1024x16 launch of melt-bench-causal-attention): Nsight Compute's warp states, stall sampling by
# instruction (SourceCounters), pipe utilization and instruction mix.
#   bash bench/results/session51_h200/call6.sh
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
build_gpu melt-bench-causal-attention 2>&1 | tail -3
timeout 150 ncu --clock-control none -k regex:causalAttentionWarpgroupKernel -c 1 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
  --section SourceCounters --section InstructionStats \
  --print-details all \
  build-gpu/bin/melt-bench-causal-attention --iters 1 > "$OUT/ncu-attention-stalls.txt" 2>&1
echo "ncu rc=$?"
grep -iE "stall|pipe|tensor|Warp Cycles|Duration|Issue" "$OUT/ncu-attention-stalls.txt" | cut -c1-150 | head -70
