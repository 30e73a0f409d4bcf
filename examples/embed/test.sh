#!/usr/bin/env bash
# Installs the runtime (built on its own, without MLIR) into a prefix,
# builds examples/embed against it as a separate CMake project with
# find_package(melt_runtime), and runs it on a compiled golden model.
#   test.sh SOURCE_ROOT WORK_DIR ARTIFACT CHECKPOINT EXPECTED_TOKENS...
set -euo pipefail
root=$1 work=$2 artifact=$3 checkpoint=$4
shift 4
rm -rf "$work"
cmake -S "$root/runtime" -B "$work/runtime" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMELT_BUILD_TESTS=OFF -DCMAKE_INSTALL_PREFIX="$work/prefix" >/dev/null
cmake --build "$work/runtime" >/dev/null
cmake --install "$work/runtime" >/dev/null
cmake -S "$root/examples/embed" -B "$work/embed" -G Ninja \
  -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/embed" >/dev/null
out=$("$work/embed/embed" "$artifact" "$checkpoint" 1 17 42 99 3 250 7 128)
echo "$out"
expected="runtime 0.1.0 generated: $*"
if [ "$out" != "$expected" ]; then
  echo "expected: $expected" >&2
  exit 1
fi
