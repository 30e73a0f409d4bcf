#!/usr/bin/env bash
# Sets up the machine if needed, builds melt and runs every test: lit and
# unit tests of the compiler (ctest), and the runtime built on its own,
# without MLIR, as on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/setup.sh
bash scripts/build.sh

echo "== runtime, standalone (no MLIR) =="
cmake -S runtime -B build/runtime-standalone -G Ninja \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build/runtime-standalone >/dev/null
ctest --test-dir build/runtime-standalone --output-on-failure -j "$(nproc)" \
  | tail -n 3

echo "== melt: lit and unit tests =="
ctest --test-dir build --output-on-failure -j "$(nproc)"
