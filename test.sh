#!/usr/bin/env bash
# Sets up the machine if needed, builds melt and runs every test:
#  1. the runtime built on its own, without MLIR (as on the GPU machine),
#     with ASan+UBSan, its tests run on a compiled golden model (API misuse,
#     damaged artifacts);
#  2. melt-import built with ASan+UBSan, run over the malformed-input corpus;
#  3. all lit and unit tests of the compiler (ctest).
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/setup.sh
bash scripts/build.sh

# A compiled golden model for the runtime's own tests.
artifact=$PWD/build/test/v3-tiny-fp8.melt
golden=$PWD/test/golden/v3-tiny-fp8/checkpoint
build/bin/melt-compile "$golden" -o "$artifact" 2>/dev/null
# The same family compiled for CUDA: its kernel plans reach a device.
cudaArtifact=$PWD/build/test/v3-tiny-bf16-cuda.melt
cudaGolden=$PWD/test/golden/v3-tiny/checkpoint
build/bin/melt-compile "$cudaGolden" --precision=bf16 --target=cuda \
  -o "$cudaArtifact" 2>/dev/null
# The same family in the deepseek-v3 policy: the executor's quantize folds
# and SiLU-mul fusions, run under the sanitizers too.
fp8PolicyArtifact=$PWD/build/test/v3-tiny-deepseek-v3.melt
build/bin/melt-compile "$cudaGolden" --precision=deepseek-v3 \
  -o "$fp8PolicyArtifact" 2>/dev/null

echo "== runtime, standalone (no MLIR), under ASan+UBSan =="
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
cmake -S runtime -B build/runtime-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-19 -DCMAKE_CXX_COMPILER=clang++-19 \
  -DCMAKE_CXX_COMPILER_LAUNCHER=ccache "-DCMAKE_CXX_FLAGS=$sanitize" \
  -DMELT_ENABLE_CUDA=OFF \
  "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" >/dev/null
ninja -C build/runtime-asan >/dev/null
MELT_TEST_ARTIFACT=$artifact MELT_TEST_CHECKPOINT=$golden \
MELT_TEST_CUDA_ARTIFACT=$cudaArtifact MELT_TEST_CUDA_CHECKPOINT=$cudaGolden \
MELT_TEST_FP8_POLICY_ARTIFACT=$fp8PolicyArtifact \
MELT_TEST_FP8_POLICY_CHECKPOINT=$cudaGolden \
  ctest --test-dir build/runtime-asan --output-on-failure -j "$(nproc)" \
  > build/runtime-asan/ctest.log || { cat build/runtime-asan/ctest.log; exit 1; }
tail -n 3 build/runtime-asan/ctest.log

echo "== malformed inputs under ASan+UBSan =="
MELT_BUILD_DIR=build/asan MELT_BUILD_TYPE=RelWithDebInfo MELT_SANITIZE=1 \
  bash scripts/build.sh melt-import >/dev/null
python3 test/Frontends/malformed/corpus.py --tool build/asan/bin/melt-import \
  --work build/asan/corpus | tail -n 1

echo "== melt: lit and unit tests =="
ctest --test-dir build --output-on-failure -j "$(nproc)"
