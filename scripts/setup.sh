#!/usr/bin/env bash
# Installs every Debian package melt needs on a fresh Debian 12 machine.
# Idempotent: when everything is present it only checks and exits quietly.
set -euo pipefail

packages=(
  # Build tools.
  cmake ninja-build ccache g++ git
  # LLVM/MLIR 19: the compiler side (MELT_BUILD_COMPILER), lit, FileCheck, lld.
  libmlir-19-dev mlir-19-tools llvm-19-dev llvm-19-tools clang-19 lld-19
  # Link dependencies of LLVM 19 that its CMake package expects.
  libzstd-dev zlib1g-dev libxml2-dev libffi-dev libedit-dev libncurses-dev libz3-dev libcurl4-openssl-dev
  # Tests.
  libgtest-dev libgmock-dev python3
  # Sanitizer runtimes (the ASan+UBSan build of test.sh).
  libclang-rt-19-dev
  # Runtime: artifact schema.
  libflatbuffers-dev flatbuffers-compiler
  # Runtime: the CPU device's GEMMs.
  libdnnl-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
