#!/usr/bin/env bash
# Sets up the machine if needed, builds melt and runs every test:
#  1. the runtime built on its own, without MLIR (as on the GPU machine);
#  2. melt-import built with ASan+UBSan, run over the malformed-input corpus;
#  3. all lit and unit tests of the compiler (ctest).
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

echo "== malformed inputs under ASan+UBSan =="
MELT_BUILD_DIR=build/asan MELT_BUILD_TYPE=RelWithDebInfo MELT_SANITIZE=1 \
  bash scripts/build.sh melt-import >/dev/null
python3 test/Frontends/malformed/corpus.py --tool build/asan/bin/melt-import \
  --work build/asan/corpus | tail -n 1

echo "== melt: lit and unit tests =="
ctest --test-dir build --output-on-failure -j "$(nproc)"
