#!/usr/bin/env bash
# On the GPU machine: builds the runtime and melt-run without MLIR (from the
# headers scripts/gpu/prepare.sh carried), runs the runtime's tests on a
# golden model, and generates with melt-run.
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_gpu
MELT_TEST_ARTIFACT=$carry/models/v3-tiny-fp8.melt \
MELT_TEST_CHECKPOINT=$root/test/golden/v3-tiny-fp8/checkpoint \
  ctest --test-dir build-gpu --output-on-failure | tail -n 3
build-gpu/bin/melt-run "$carry/models/v3-tiny.melt" \
  --checkpoint test/golden/v3-tiny/checkpoint \
  --prompt-ids 1,17,42,99,3,250,7,128 --max-new 16
