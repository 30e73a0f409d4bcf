#!/usr/bin/env bash
# Session 50, call 4: the experts' combine eight BF16 values a thread: its tests, the device suite,
# mini's prefill with it and without (MELT_CUDA_COMBINE_BY_EIGHT=0), a trace of mini-bf16's 8x1024 prefill.
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/.."
source scripts/gpu/common.sh
build_gpu melt-run melt-cuda-kernel-tests melt-runtime-tests melt-kernel-trace 2>&1 | tail -5
timeout 60 build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Combine*' > "$OUT/kernel-tests-combine.txt" 2>&1; echo "combine tests rc=$?"
tail -2 "$OUT/kernel-tests-combine.txt"; grep -m5 "Failure\|FAILED" "$OUT/kernel-tests-combine.txt"
MELT_TEST_MODELS=$(golden_models) timeout 120 build-gpu/bin/melt-runtime-tests --gtest_filter='*Conformance*/cuda*:*SessionOnDevice*/cuda*' > "$OUT/device-tests.txt" 2>&1; echo "device tests rc=$?"
tail -2 "$OUT/device-tests.txt"; grep -m5 "Failure\|FAILED" "$OUT/device-tests.txt"
ROUNDS=2 timeout 380 bash scripts/gpu/prefill-ab.sh MELT_CUDA_COMBINE_BY_EIGHT=0 -- mini-bf16.melt mini-fp8.melt > /dev/null 2>&1; echo "ab rc=$?"
cat "$OUT/prefill-ab.txt"
timeout 100 bash scripts/gpu/prefill-kernels.sh 8 1024 mini-bf16.melt > "$OUT/prefill-kernels-log.txt" 2>&1; echo "trace rc=$?"
grep -m3 "burst\|combine" "$OUT/prefill-kernels-mini-bf16.melt-8x1024.txt"
