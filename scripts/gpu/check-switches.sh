#!/usr/bin/env bash
# On the GPU machine: CUDA switches written but off by default until run
# on a GPU, checked and compared in one command: their conformance tests on
# cuda:0 (a gtest filter), the golden models' sessions on cuda:0 with all
# of them on (common.sh's golden_models, from prepare.sh's artifacts), then
# each switch's graph span against the default (ab-timeline.sh, ROUNDS
# rounds, alternating) for mini FP8 and bf16 at batch 1 (prepare.sh --mini).
#   scripts/gpu/check-switches.sh 'FILTER' NAME=VALUE...
# e.g. scripts/gpu/check-switches.sh '*MlaOfQuery*/cuda*' MELT_CUDA_FUSED_MLA_QUERY=1
# (session 20 ran it so for the three switches now on by default:
# bench/results/switches_s20_h200.txt).
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: scripts/gpu/check-switches.sh 'GTEST_FILTER' NAME=VALUE..." >&2
  exit 2
fi
source "$(dirname "$0")/common.sh"
filter=$1
shift
switches="$*"
build_gpu melt-run melt-runtime-tests melt-kernel-trace
echo "== conformance on cuda:0 =="
build-gpu/bin/melt-runtime-tests \
  --gtest_filter="$filter" \
  > "$out/check-switches-conformance.txt" 2>&1
echo "rc=$?"
grep -E "^\[ +(FAILED|PASSED) |Failure" "$out/check-switches-conformance.txt" | head
models=$(golden_models)
echo "== sessions on cuda:0, every switch on =="
# shellcheck disable=SC2086 # the switches as words
env $switches MELT_TEST_MODELS="$models" build-gpu/bin/melt-runtime-tests \
  --gtest_filter='*SessionOnDevice*/cuda*' > "$out/check-switches-sessions.txt" 2>&1
echo "rc=$?"
grep -E "^\[ +(FAILED|PASSED) |Failure|of the range" "$out/check-switches-sessions.txt" |
  cut -c1-160 | head -20
echo "== graph spans, batch 1 =="
for model in mini-fp8.melt mini-bf16.melt; do
  # shellcheck disable=SC2086 # the switches as variants
  ROUNDS=${ROUNDS:-2} bash "$(dirname "$0")/ab-timeline.sh" "$model" 1 default $switches
done
