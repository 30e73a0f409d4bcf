#!/usr/bin/env bash
# melt's main job on the built-in default model (tiny), as far as it goes
# today: write a synthetic Hugging Face checkpoint, import it (config.json,
# index, safetensors headers, every tensor checked), and run the model IR
# through melt-opt with a report of what it holds.
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/setup.sh
bash scripts/build.sh melt-import melt-opt >/dev/null

model=${1:-tiny}
out=build/demo
rm -rf "$out/$model-checkpoint"
mkdir -p "$out"

echo "== melt-import --synthesize=$model --dtype=fp8 -o $out/$model-checkpoint"
build/bin/melt-import --synthesize="$model" --dtype=fp8 -o "$out/$model-checkpoint"
ls -l "$out/$model-checkpoint"

echo "== melt-import $out/$model-checkpoint -o $out/$model.mlir"
time build/bin/melt-import "$out/$model-checkpoint" -o "$out/$model.mlir"

echo "== melt-opt $out/$model.mlir --melt-model-report -o $out/$model.opt.mlir"
build/bin/melt-opt "$out/$model.mlir" --melt-model-report -o "$out/$model.opt.mlir"

echo "== the first decoder layer of @forward:"
grep -m 1 -A 30 "func.func @forward" "$out/$model.opt.mlir" | cut -c 1-160
echo "..."
echo "Full IR: $out/$model.opt.mlir ($(wc -l < "$out/$model.opt.mlir") lines)"
