#!/usr/bin/env bash
# Times the full DeepSeek-V3 model IR (61 layers + MTP, 256 experts per MoE
# layer): build + verify + print (melt-import), then parse + verify + print
# (melt-opt). Prints one JSON line per step, best of N runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MELT_BIN:-$root/build/bin}
runs=${RUNS:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

best() { # best wall time in seconds of "$@" over $runs runs
  local best=""
  for _ in $(seq "$runs"); do
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
    best=$(python3 -c "b='$best'; t=$t1-$t0; print(t if not b else min(float(b), t))")
  done
  echo "$best"
}

build=$(best "$bin/melt-import" --builtin=v3 -o "$tmp/v3.mlir")
reparse=$(best "$bin/melt-opt" "$tmp/v3.mlir" -o "$tmp/v3.again.mlir")
bytes=$(stat -c %s "$tmp/v3.mlir")
python3 - <<PY
import json
build, reparse = $build, $reparse
print(json.dumps({"bench": "v3_ir_roundtrip", "step": "build+verify+print", "seconds": round(build, 3)}))
print(json.dumps({"bench": "v3_ir_roundtrip", "step": "parse+verify+print", "seconds": round(reparse, 3)}))
print(json.dumps({"bench": "v3_ir_roundtrip", "step": "total", "seconds": round(build + reparse, 3),
                  "ir_bytes": $bytes, "target_seconds": 2.0, "ratio_to_target": round((build + reparse) / 2.0, 3)}))
PY
