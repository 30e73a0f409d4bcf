#!/usr/bin/env bash
# On the GPU machine (the one with transformers): regenerates the golden
# data of scripts/golden/make_golden.py and packs it, as $out/golden.tgz
# (test/golden/<model>/...), for the device tool to bring back; unpack it
# at the repository root here with `tar xzf golden.tgz`. Checks that the
# models already in test/golden came out byte for byte the same (the
# generation is deterministic for a given transformers and torch); a model
# named on the command line is packed alone (default: every model).
#   scripts/gpu/make-golden.sh [MODEL...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
tmp=$(mktemp -d)
python3 scripts/golden/make_golden.py "$tmp" > "$out/make-golden.log"
for dir in "$tmp"/*/; do
  model=$(basename "$dir")
  [ -d "test/golden/$model" ] || continue
  if diff -r -q "test/golden/$model" "$dir" > /dev/null; then
    echo "$model: the same as test/golden/$model"
  else
    echo "$model: differs from test/golden/$model (transformers or torch changed?)"
  fi
done | tee -a "$out/make-golden.log"
models=${*:-$(cd "$tmp" && ls -d */ | tr -d /)}
mkdir -p "$tmp/pack/test/golden"
for model in $models; do
  cp -r "$tmp/$model" "$tmp/pack/test/golden/"
done
tar czf "$out/golden.tgz" -C "$tmp/pack" test
rm -rf "$tmp"
du -h "$out/golden.tgz"
