#!/usr/bin/env bash
# On the GPU machine: a switch's effect on the MLA decode kernels
# (MELT_CUDA_MLA_*), alternating with the default in one command. First the
# MLA kernel tests with the switches set (CudaMlaDecode.*, CudaMlaSplit.*),
# then ROUNDS rounds (default 2) of melt-bench-mla-decode with the switches
# and without; each run measures its own copy bandwidth, and for batch 64 x
# 4096 cached tokens (the issue's shape: 16 heads against the copy
# bandwidth, 128 heads in TFLOP/s; 16 heads also at batch 60 and 66) this
# prints the kernel's time and
# bandwidth as a share of that run's copy. The runs' JSON goes to
# $OUT/mla-ab-ROUND-on|off.json, the printed lines to $OUT/mla-ab.txt.
#   scripts/gpu/mla-decode-ab.sh NAME=VALUE...
# e.g. scripts/gpu/mla-decode-ab.sh MELT_CUDA_MLA_LARGE_TILES=0
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: scripts/gpu/mla-decode-ab.sh NAME=VALUE..." >&2
  exit 2
fi
for switch in "$@"; do
  if ! [[ $switch =~ ^[A-Z0-9_]+=.*$ ]]; then
    echo "mla-decode-ab.sh: error: '$switch' is not NAME=VALUE" >&2
    exit 2
  fi
done
source "$(dirname "$0")/common.sh"
build_gpu melt-cuda-kernel-tests melt-bench-mla-decode
log="$out/mla-ab.txt"
say() { echo "$*" | tee -a "$log"; }
say "switches: $*"
say "kernel tests with the switches: $(env "$@" build-gpu/bin/melt-cuda-kernel-tests \
  --gtest_filter='CudaMlaDecode.*:CudaMlaSplit.*' 2>&1 | grep -E '^\[  (PASSED|FAILED) ' | paste -sd' ')"
for round in $(seq "${ROUNDS:-2}"); do
  for on in 1 0; do
    json="$out/mla-ab-$round-$([ $on = 1 ] && echo on || echo off).json"
    if [ $on = 1 ]; then
      env "$@" build-gpu/bin/melt-bench-mla-decode > "$json" 2>&1
    else
      build-gpu/bin/melt-bench-mla-decode > "$json" 2>&1
    fi
    python3 - "$json" "round $round switches=$on" <<'EOF' | tee -a "$log"
import json, sys
rows = []
for line in open(sys.argv[1]):
    try:
        rows.append(json.loads(line))
    except ValueError:
        print(f"{sys.argv[2]}: {line.strip()}")
copy = next((r["GBps"] for r in rows if r.get("what") == "copy_bw"), None)
for r in rows:
    if (r.get("batch") in (60, 64, 66) and (r.get("seq"),
            r.get("chunks_per_sequence"), r.get("tiles")) == (4096, 0, "tma")
            and copy):
        print(f"{sys.argv[2]}: batch {r['batch']} x {r['heads']} heads "
              f"({r['kernel']}, {r['batch'] * r['chunks']} blocks a head "
              f"group) {r['us']} us, "
              f"{r['cache_GBps']} GB/s = {100 * r['cache_GBps'] / copy:.1f}% "
              f"of {copy} GB/s copy, {r['tflops']} TFLOP/s")
EOF
  done
done
