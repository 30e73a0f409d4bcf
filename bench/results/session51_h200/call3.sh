#!/usr/bin/env bash
# Session 51, call 3: the BF16 pair's rows read in place (no gather): the grouped kernel tests,
# memcheck and racecheck on the pair's cases, the device suite with the golden models, and mini-bf16's
# prefill with it and without (MELT_CUDA_PAIR_ROWS_IN_PLACE=0), two rounds, greedy tokens compared.
#   bash bench/results/session51_h200/call3.sh
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
build_gpu melt-run melt-cuda-kernel-tests melt-runtime-tests 2>&1 | tail -5
timeout 90 build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Grouped*' > "$OUT/kernel-tests-grouped.txt" 2>&1
echo "grouped tests rc=$?"; tail -n 1 "$OUT/kernel-tests-grouped.txt"; grep -m5 "Failure\|FAILED" "$OUT/kernel-tests-grouped.txt"
for tool in memcheck racecheck; do
  timeout 120 compute-sanitizer --tool $tool build-gpu/bin/melt-cuda-kernel-tests \
    --gtest_filter='CudaGroupedGemm.GateUp*' > "$OUT/$tool-pair.txt" 2>&1
  echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|PASSED' "$OUT/$tool-pair.txt" | paste -sd' ')"
done
MELT_TEST_MODELS=$(golden_models) timeout 120 build-gpu/bin/melt-runtime-tests \
  --gtest_filter='*Conformance*/cuda*:*SessionOnDevice*/cuda*' > "$OUT/device-tests.txt" 2>&1
echo "device tests rc=$?"; tail -n 3 "$OUT/device-tests.txt"; grep -m5 "Failure\|FAILED" "$OUT/device-tests.txt"
ROUNDS=2 timeout 300 bash scripts/gpu/prefill-ab.sh MELT_CUDA_PAIR_ROWS_IN_PLACE=0 -- mini-bf16.melt \
  > /dev/null 2>&1; echo "ab rc=$?"
cat "$OUT/prefill-ab.txt"
