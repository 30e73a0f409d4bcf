#!/usr/bin/env bash
# melt's main job on the built-in default model (tiny): write a synthetic
# FP8 Hugging Face checkpoint, compile it for the CPU, and generate from it.
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/setup.sh
bash scripts/build.sh melt-import melt-compile melt-run >/dev/null

model=${1:-tiny}
out=build/demo
ckpt=$out/$model-checkpoint
rm -rf "$ckpt"
mkdir -p "$out"

echo "== 1. a synthetic checkpoint: melt-import --synthesize=$model --dtype=fp8 -o $ckpt"
build/bin/melt-import --synthesize="$model" --dtype=fp8 -o "$ckpt"

echo "== 2. compile for the CPU: melt-compile $ckpt --target=cpu -o $out/$model.melt"
build/bin/melt-compile "$ckpt" --target=cpu -o "$out/$model.melt"
ls -l "$out/$model.melt"

echo "== 3. generate: melt-run $out/$model.melt --checkpoint $ckpt --prompt-ids 1,2,3,4,5,6,7,8 --max-new 32"
build/bin/melt-run "$out/$model.melt" --checkpoint "$ckpt" \
  --prompt-ids 1,2,3,4,5,6,7,8 --max-new 32
