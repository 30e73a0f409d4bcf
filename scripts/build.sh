#!/usr/bin/env bash
# Configures (once) and builds melt into build/ with Ninja and ccache.
# Uses clang-19 and lld when present (faster than gcc and GNU ld on MLIR).
# Extra arguments are passed to ninja (e.g. a target name).
# MELT_BUILD_DIR picks another build tree; MELT_SANITIZE=1 configures it with
# ASan+UBSan (no tests: the tools only, for the malformed-input corpus).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MELT_BUILD_DIR:-$root/build}

if [ ! -f "$build/build.ninja" ]; then
  args=(-G Ninja -DCMAKE_BUILD_TYPE=${MELT_BUILD_TYPE:-Release}
        -DMLIR_DIR=/usr/lib/llvm-19/lib/cmake/mlir)
  if command -v clang++-19 >/dev/null; then
    args+=(-DCMAKE_C_COMPILER=clang-19 -DCMAKE_CXX_COMPILER=clang++-19
           -DLLVM_USE_LINKER=lld)
  fi
  if [ -n "${MELT_SANITIZE:-}" ]; then
    flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
    args+=(-DMELT_BUILD_TESTS=OFF "-DCMAKE_C_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags"
           "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined")
  fi
  cmake -S "$root" -B "$build" "${args[@]}" >/dev/null
fi
# Two cores: never more jobs than cores (MLIR TUs take ~1 GB each).
ninja -C "$build" -j "$(nproc)" "$@"
