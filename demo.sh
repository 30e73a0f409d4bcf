#!/usr/bin/env bash
# melt's main job on the built-in default model (tiny): build its melt IR,
# verify it and run it through melt-opt, then show what the model holds.
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/setup.sh
bash scripts/build.sh melt-import melt-opt >/dev/null

model=${1:-tiny}
out=build/demo
mkdir -p "$out"

echo "== melt-import --builtin=$model -o $out/$model.mlir"
time build/bin/melt-import --builtin="$model" -o "$out/$model.mlir"

echo "== melt-opt $out/$model.mlir --melt-model-report -o $out/$model.opt.mlir"
build/bin/melt-opt "$out/$model.mlir" --melt-model-report -o "$out/$model.opt.mlir"

echo "== the first decoder layer of @forward:"
grep -m 1 -A 30 "func.func @forward" "$out/$model.opt.mlir" | cut -c 1-160
echo "..."
echo "Full IR: $out/$model.opt.mlir ($(wc -l < "$out/$model.opt.mlir") lines)"
