#!/usr/bin/env bash
# Session 51, call 2 (main with the attention's L2 sets and TMA): the whole kernel suite, memcheck
# on the attention's cases, the device suite with the golden models, mini's prefills beside
# transformers, then Nsight Compute on the grouped experts' first pair and down, in mini-bf16's
# 8x1024 prefill and in melt-bench-grouped-gemm (why the bench's gains did not carry to the model).
#   bash bench/results/session51_h200/call2.sh
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
build_gpu melt-run melt-cuda-kernel-tests melt-runtime-tests melt-bench-grouped-gemm 2>&1 | tail -5
timeout 150 build-gpu/bin/melt-cuda-kernel-tests > "$OUT/kernel-tests.txt" 2>&1; echo "kernel tests rc=$?"
tail -n 2 "$OUT/kernel-tests.txt"; grep -m5 "Failure\|FAILED" "$OUT/kernel-tests.txt"
timeout 150 compute-sanitizer --tool memcheck build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Causal*' \
  > "$OUT/memcheck-causal.txt" 2>&1; echo "memcheck rc=$?"; tail -n 3 "$OUT/memcheck-causal.txt"
MELT_TEST_MODELS=$(golden_models) timeout 120 build-gpu/bin/melt-runtime-tests \
  --gtest_filter='*Conformance*/cuda*:*SessionOnDevice*/cuda*' > "$OUT/device-tests.txt" 2>&1
echo "device tests rc=$?"; tail -n 2 "$OUT/device-tests.txt"; grep -m5 "Failure\|FAILED" "$OUT/device-tests.txt"
timeout 200 bash scripts/gpu/prefill-vs-hf.sh > "$OUT/prefill-vs-hf.txt" 2>&1; echo "vs hf rc=$?"
grep -o '"model": "[^"]*"\|"impl": "[^"]*"\|"batch": [0-9]*\|"prefill_tokens_per_s": [0-9.]*\|"tok_per_s": [0-9.]*' \
  "$OUT/prefill_vs_hf.json" | paste -sd' ' | sed 's/"model"/\n"model"/g; s/"impl"/\n"impl"/g'
sections=(--section SpeedOfLight --section WarpStateStats --section SchedulerStats
  --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats)
timeout 150 ncu --clock-control none -k regex:groupedGemmKernel -c 2 "${sections[@]}" \
  build-gpu/bin/melt-run "$carry/models/mini-bf16.melt" --random-weights --device cuda:0 \
  --prompt-ids "$(prompt_ids 1024)" --max-new 1 --batch 8 > "$OUT/ncu-grouped-model.txt" 2>&1
echo "ncu model rc=$?"
timeout 150 ncu --clock-control none -k regex:groupedGemmKernel -c 2 "${sections[@]}" \
  build-gpu/bin/melt-bench-grouped-gemm --iters 1 > "$OUT/ncu-grouped-bench.txt" 2>&1
echo "ncu bench rc=$?"
for f in model bench; do
  echo "== $f"; grep -E "groupedGemmKernel|Duration|DRAM Throughput|L2 Hit|Compute \(SM\)|No Eligible|Warp Cycles Per Issued" \
    "$OUT/ncu-grouped-$f.txt" | cut -c1-150
done
