#!/usr/bin/env bash
# Session 51, call 5: the wgmma attention in 128-key tiles (causal-128-keys-tried.diff, branch
# wip/causal-128-keys) against main: B's Causal kernel tests and memcheck on them,
# melt-bench-causal-attention A B alternating (two rounds), mini-bf16's prefills A B B A with the
# greedy tokens of an 8x1024 prompt compared.
#   bash bench/results/session51_h200/call5.sh
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
source scripts/gpu/common.sh
here=bench/results/session51_h200
targets=(melt-run melt-cuda-kernel-tests melt-bench-causal-attention)
configure() {
  cmake -S runtime -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DMELT_SCHEMA_HEADER_DIR="$carry/schema" \
    -DMELT_FLATBUFFERS_INCLUDE_DIR="$carry/flatbuffers" >/dev/null &&
    ninja -C "$1" "${targets[@]}" >/dev/null
}
configure build-gpu-a || { echo "build A failed"; exit 1; }
git apply "$here/causal-128-keys-tried.diff" && configure build-gpu-b || { echo "build B failed"; exit 1; }
timeout 60 build-gpu-b/bin/melt-cuda-kernel-tests --gtest_filter='*Causal*' > "$OUT/kernel-tests-b.txt" 2>&1
echo "B causal tests rc=$? $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/kernel-tests-b.txt" | paste -sd' ')"
grep -m5 "Failure\|FAILED\|Expected\|Which is" "$OUT/kernel-tests-b.txt"
timeout 60 compute-sanitizer --tool memcheck build-gpu-b/bin/melt-cuda-kernel-tests \
  --gtest_filter='*Causal*' > "$OUT/memcheck-b.txt" 2>&1
echo "B memcheck rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck-b.txt")"
for round in 1 2; do
  for b in a b; do
    timeout 60 "build-gpu-$b/bin/melt-bench-causal-attention" --iters 10 2>&1 | grep '"wgmma"' |
      sed "s/^/$b $round /" >> "$OUT/attention-bench.txt"
  done
done
grep -o '^[ab] [12] .*"queries": "[^"]*", "sequences": [0-9]*, "tokens": [0-9]*, "heads": [0-9]*, "us": [0-9.]*' \
  "$OUT/attention-bench.txt" | sed 's/{"what.*"queries"/"queries"/'
prompt=$(prompt_ids 1024)
for b in a b; do
  echo "$b tokens: $(timeout 60 "build-gpu-$b/bin/melt-run" "$carry/models/mini-bf16.melt" --random-weights \
    --device cuda:0 --prompt-ids "$prompt" --max-new 6 --batch 8 2>/dev/null | md5sum | cut -c1-12)"
done
for b in a b b a; do
  echo "$b prefill: $(timeout 100 "build-gpu-$b/bin/melt-run" "$carry/models/mini-bf16.melt" \
    --random-weights --device cuda:0 --bench --warmup --repeat 3 --prompt-ids "$prompt" \
    --max-new 1 --batch 8 2>&1 | grep -o '"prefill_tokens_per_s": [0-9.]*')"
done
