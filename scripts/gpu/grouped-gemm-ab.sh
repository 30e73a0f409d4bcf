#!/usr/bin/env bash
# On the GPU machine: a switch's effect on the grouped expert products
# (GroupedGemm.h, GroupedGemmFp8.h), alternating with the default in one
# command: the grouped kernel tests with the switches and without, then
# ROUNDS rounds (default 2) of melt-bench-grouped-gemm both ways, its
# lines (mini's and DeepSeek-V3's shapes) to $OUT/grouped-ab.txt.
#   scripts/gpu/grouped-gemm-ab.sh NAME=VALUE...
# e.g. scripts/gpu/grouped-gemm-ab.sh MELT_CUDA_GROUPED_PAIR_N256=0
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: scripts/gpu/grouped-gemm-ab.sh NAME=VALUE..." >&2
  exit 2
fi
source "$(dirname "$0")/common.sh"
build_gpu melt-cuda-kernel-tests melt-bench-grouped-gemm
log="$out/grouped-ab.txt"
say() { echo "$*" | tee -a "$log"; }
say "switches: $*"
for on in 1 0; do
  tests=$( (if [ $on = 1 ]; then env "$@" build-gpu/bin/melt-cuda-kernel-tests \
    --gtest_filter='CudaGroupedGemm*'; else build-gpu/bin/melt-cuda-kernel-tests \
    --gtest_filter='CudaGroupedGemm*'; fi) 2>&1 | grep -E '^\[  (PASSED|FAILED) ' | paste -sd' ')
  say "kernel tests switches=$on: $tests"
done
for round in $(seq "${ROUNDS:-2}"); do
  for on in 1 0; do
    if [ $on = 1 ]; then
      lines=$(env "$@" build-gpu/bin/melt-bench-grouped-gemm --iters 10 2>&1)
    else
      lines=$(build-gpu/bin/melt-bench-grouped-gemm --iters 10 2>&1)
    fi
    echo "$lines" | grep '"grouped_gemm_melt"' |
      sed "s/^{\"what\": \"grouped_gemm_melt\", /round $round switches=$on: /" |
      cut -c1-200 | tee -a "$log"
  done
done
