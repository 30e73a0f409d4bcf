#!/usr/bin/env bash
# On the GPU machine: a build option's effect on `mini`, the default build
# (build-gpu) against one configured with the given CMake options
# (build-gpu-ab), alternating in one command on the same inputs: for a
# change that lives in device code, where no environment switch can reach
# (session 35: griddepcontrol.launch_dependents before the wait, behind a
# macro: bench/results/trigger_early_tried_s35_h200.txt). For each
# model, ROUNDS rounds (default 2, order A B B A) of the decode at BATCHES
# (default 1,16,64; prompt 128, 64 new tokens; --bench --warmup --repeat
# 3) and, with PREFILL=1, the prefill at 1x1024 and 8x1024: the rates, the
# md5 of each batch's greedy tokens (an option that moves no sum must give
# the same) and a DISAGREE for each repeat whose tokens differed from the
# run before. Lines go to $OUT/build-ab.txt as they come; the time each
# build took too. TESTS=1 first runs the option's build's CUDA kernel tests
# and device conformance suite on the GPU; BENCHES="melt-bench-..." then
# runs those benchmarks of both builds (their default iterations),
# alternating over the rounds, their JSON lines to $OUT/build-ab-benches.txt
# and each line's "us" of both builds side by side into the log (session
# 48's SiLU division was measured so, with melt-bench-grouped-gemm).
# PATCH=FILE builds the second one from the tree with FILE applied (git
# apply, taken back on exit), with or without options: a change kept as a
# diff until it is measured (session 51's tried attention forms).
#   scripts/gpu/build-ab.sh -DNAME=VALUE... [-- MODEL.melt...]
#   PATCH=FILE scripts/gpu/build-ab.sh [-DNAME=VALUE...] -- [MODEL.melt...]
set -uo pipefail
if [ $# -lt 1 ] && [ -z "${PATCH:-}" ]; then
  echo "usage: scripts/gpu/build-ab.sh -DNAME=VALUE... [-- MODEL.melt...]" >&2
  echo "       PATCH=FILE scripts/gpu/build-ab.sh [-DNAME=VALUE...] -- [MODEL.melt...]" >&2
  exit 2
fi
source "$(dirname "$0")/common.sh"
AB_DEFAULT_MODELS="mini-fp8.melt mini-bf16.melt" ab_arguments "$@"
options=("${switches[@]}")
log="$out/build-ab.txt"
say() { echo "$*" | tee -a "$log"; }
targets=(melt-run)
read -r -a benches <<< "${BENCHES:-}"
targets+=("${benches[@]}")
[ "${TESTS:-}" = 1 ] && targets+=(melt-cuda-kernel-tests melt-runtime-tests)
t0=$(date +%s)
build_gpu "${targets[@]}"
say "build-gpu (default) built in $(($(date +%s) - t0)) s"
if [ -n "${PATCH:-}" ]; then
  git apply "$PATCH" || {
    say "build-ab.sh: error: $PATCH does not apply to this tree"
    exit 1
  }
  trap 'git apply -R "$PATCH"' EXIT
fi
t0=$(date +%s)
cmake -S runtime -B build-gpu-ab -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMELT_SCHEMA_HEADER_DIR="$carry/schema" \
  -DMELT_FLATBUFFERS_INCLUDE_DIR="$carry/flatbuffers" "${options[@]}" >/dev/null &&
  ninja -C build-gpu-ab "${targets[@]}" >/dev/null || {
  say "build-gpu-ab (${options[*]}${PATCH:+ + $PATCH}) failed"
  exit 1
}
say "build-gpu-ab (${options[*]}${PATCH:+ + $PATCH}) built in $(($(date +%s) - t0)) s"
# bench BUILD MODEL ARGS...: melt-run --bench of BUILD, its figures on a line.
bench() {
  local build=$1 model=$2
  shift 2
  timeout "${AB_TIMEOUT:-150}" "$build/bin/melt-run" "$carry/models/$model" \
    --random-weights --device cuda:0 --bench "$@" 2>&1
}
# figures: the figures of melt-run's lines on one, with each batch's md5 of
# its greedy tokens and DISAGREE for each repeat whose tokens differed.
figures() {
  local said
  said=$(cat)
  echo "$said" | grep -o '"batch": [0-9]*\|"decode_tokens_per_s": [0-9.]*\|"prefill_tokens_per_s": [0-9.]*\|"decode_roofline_share": [0-9.]*\|other tokens than the run before' |
    sed 's/other tokens than the run before/DISAGREE/' | paste -sd' ' | tr -d '\n'
  echo -n "; tokens md5:"
  echo "$said" | grep -o '"generated": \[[0-9, ]*\]' | while read -r line; do
    echo -n " $(echo "$line" | md5sum | cut -c1-8)"
  done
  echo
}
if [ "${TESTS:-}" = 1 ]; then
  say "build-gpu-ab kernel tests: $(timeout 300 build-gpu-ab/bin/melt-cuda-kernel-tests 2>&1 |
    grep -E '^\[  (PASSED|FAILED) |Failure' | paste -sd' ')"
  say "build-gpu-ab device conformance: $(timeout 300 build-gpu-ab/bin/melt-runtime-tests \
    --gtest_filter='*Conformance*' 2>&1 | grep -E '^\[  (PASSED|FAILED) |Failure' |
    paste -sd' ')"
fi
if [ ${#benches[@]} -gt 0 ]; then
  for round in $(seq "${ROUNDS:-2}"); do
    for build in build-gpu build-gpu-ab; do
      for b in "${benches[@]}"; do
        echo "round $round $build" >> "$out/build-ab-benches.txt"
        "$build/bin/$b" 2>&1 | grep '^{"what"' >> "$out/build-ab-benches.txt"
      done
    done
  done
  say "benchmarks (us), round by round, default / option:"
  python3 - "$out/build-ab-benches.txt" <<'PY' | tee -a "$log"
import json, re, sys
rows, current = {}, None
for line in open(sys.argv[1]):
    m = re.match(r'round (\d+) (\S+)', line)
    if m:
        current = (int(m.group(1)), m.group(2).endswith('-ab'))
        continue
    d = json.loads(line)
    if 'us' not in d:
        continue
    key = ' '.join(str(v) for k, v in d.items()
                   if isinstance(v, str) or (isinstance(v, int) and k != 'us'))
    rows.setdefault(key, {})[current] = d['us']
for key, us in rows.items():
    rounds = sorted({r for r, _ in us})
    print(f"  {key}: " + "  ".join(
        f"{us.get((r, False), 0):.1f} / {us.get((r, True), 0):.1f}" for r in rounds))
PY
fi
batches=${BATCHES:-1,16,64}
for model in "${models[@]}"; do
  for round in $(seq "${ROUNDS:-2}"); do
    order="build-gpu build-gpu-ab"
    [ $((round % 2)) = 0 ] && order="build-gpu-ab build-gpu"
    for build in $order; do
      say "$model round $round $build decode: $(bench $build "$model" --warmup \
        --repeat 3 --prompt-ids "$(prompt_ids 128)" --max-new 64 \
        --batch "$batches" | figures)"
      if [ "${PREFILL:-}" = 1 ]; then
        say "$model round $round $build prefill: $(bench $build "$model" \
          --warmup --repeat 3 --prompt-ids "$(prompt_ids 1024)" --max-new 1 \
          --batch 1,8 | figures)"
      fi
    done
  done
done
