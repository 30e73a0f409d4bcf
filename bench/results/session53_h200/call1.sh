#!/usr/bin/env bash
# Session 53, call 1: a prefill's query rope angles made once per token
# (causalRopeAngles, MELT_CUDA_CAUSAL_ROPE_TABLE, on) and read by the
# attention's blocks, instead of every head's blocks computing them in
# double precision before their first product.
# 1. its tests: the causal attention and MLA kernel tests, the device
#    conformance suite (MlaOfQueryDecompressedIsSplitRopeThenMla among them);
# 2. melt-bench-causal-attention: split F32, projected BF16 computing its
#    angles, projected BF16 with the table (the table's kernel timed too);
# 3. prefill-ab.sh MELT_CUDA_CAUSAL_ROPE_TABLE=0: tokens' md5s, then the
#    prefills of mini-bf16 and mini-fp8, two rounds;
# 4. session 52's next-call.sh second half: Nsight Compute's source counters
#    for the wgmma attention, its most stalled SASS instructions.
#   bash bench/results/session53_h200/call1.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
t0=$(date +%s)
build_gpu melt-run melt-cuda-kernel-tests melt-runtime-tests melt-bench-causal-attention
echo "built in $(($(date +%s) - t0)) s"
echo "kernel tests: $(timeout 120 build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Causal*:*Mla*' 2>&1 |
  tee "$OUT/kernel-tests.txt" | grep -E '^\[  (PASSED|FAILED) |Failure' | paste -sd' ')"
echo "conformance: $(timeout 200 build-gpu/bin/melt-runtime-tests --gtest_filter='*Conformance*' 2>&1 |
  tee "$OUT/conformance.txt" | grep -E '^\[  (PASSED|FAILED) |Failure' | paste -sd' ')"
timeout 90 build-gpu/bin/melt-bench-causal-attention > "$OUT/causal-bench.txt" 2>&1
echo "bench rc=$?"
grep -E '"tokens": (1024|4096), "heads": (16|128)' "$OUT/causal-bench.txt" | grep wgmma |
  sed 's/{"what": "causal_attention_melt", //' | cut -c1-150
ROUNDS=2 timeout 200 bash scripts/gpu/prefill-ab.sh MELT_CUDA_CAUSAL_ROPE_TABLE=0 -- mini-bf16.melt mini-fp8.melt
echo "prefill-ab rc=$?"
timeout 120 ncu --clock-control none -k regex:causalAttentionWarpgroupKernel -c 1 \
  --section SourceCounters --section WarpStateStats --import-source yes \
  -o "$OUT/attention-stalls" build-gpu/bin/melt-bench-causal-attention --iters 1 \
  > "$OUT/ncu-collect.txt" 2>&1
echo "ncu collect rc=$?"
timeout 60 ncu -i "$OUT/attention-stalls.ncu-rep" --page source --print-source sass --csv \
  > "$OUT/attention-stalls-sass.csv" 2> "$OUT/ncu-source-err.txt"
echo "ncu source page rc=$? ($(wc -l < "$OUT/attention-stalls-sass.csv") lines)"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
