#!/usr/bin/env bash
# Prepares what the GPU machine lacks (it has CUDA, cmake and ninja, but no
# MLIR, flatc or FlatBuffers headers) in .device-carry/ (git-ignored; name
# it in the device tool's `carry`):
#   flatbuffers/        FlatBuffers' headers (header-only)
#   schema/melt/        the generated artifact header
#   models/             artifacts compiled here from the golden checkpoints
#   hf_baseline.py      the baseline benchmark of ../shared/bench
# With --mini also models/mini{,-bf16,-fp8}.melt (precision policies fp32,
# bf16 and deepseek-v3; the last two --target=cuda), compiled from a
# synthesized 9.3 GB checkpoint that
# is deleted afterwards (scripts/gpu/mini-model.sh runs them with random
# weights).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bash scripts/build.sh melt-compile melt-import >/dev/null
carry=.device-carry
rm -rf "$carry"
mkdir -p "$carry/schema/melt" "$carry/models"
cp -r /usr/include/flatbuffers "$carry/flatbuffers-include-tmp"
mkdir -p "$carry/flatbuffers"
mv "$carry/flatbuffers-include-tmp" "$carry/flatbuffers/flatbuffers"
flatc --cpp --scoped-enums -o "$carry/schema/melt" runtime/schema/artifact.fbs
for model in v3-tiny v2-lite-tiny v3-tiny-fp8; do
  build/bin/melt-compile "test/golden/$model/checkpoint" \
    -o "$carry/models/$model.melt" 2>/dev/null
done
# The precision policies other than fp32, for the device tests.
for policy in bf16 deepseek-v3; do
  build/bin/melt-compile test/golden/v3-tiny/checkpoint --precision=$policy \
    -o "$carry/models/v3-tiny-$policy.melt" 2>/dev/null
done
# tiny-mla (tiny at DeepSeek's MLA dims) for the GPU, bf16 and deepseek-v3:
# its MLA on tensor cores; cuda-kernels.sh synthesizes its checkpoint there.
tmp=$(mktemp -d)
build/bin/melt-import --synthesize=tiny-mla -o "$tmp/tiny-mla" 2>/dev/null
for policy in bf16 deepseek-v3; do
  build/bin/melt-compile "$tmp/tiny-mla" --precision=$policy --target=cuda \
    -o "$carry/models/tiny-mla-$policy.melt" 2>/dev/null
done
rm -rf "$tmp"
# The golden model at DeepSeek's MLA dims (test/golden/v3-mla512): fp32,
# and bf16 and deepseek-v3 for the GPU (MLA on tensor cores, BF16 cache).
build/bin/melt-compile test/golden/v3-mla512/checkpoint \
  -o "$carry/models/v3-mla512.melt" 2>/dev/null
for policy in bf16 deepseek-v3; do
  build/bin/melt-compile test/golden/v3-mla512/checkpoint --precision=$policy \
    --target=cuda -o "$carry/models/v3-mla512-$policy.melt" 2>/dev/null
done
if [ "${1:-}" = --mini ]; then
  tmp=$(mktemp -d)
  build/bin/melt-import --synthesize=mini -o "$tmp/mini" 2>/dev/null
  build/bin/melt-compile "$tmp/mini" -o "$carry/models/mini.melt" 2>/dev/null
  # For the GPU they run on: the device formats and kernel choices of
  # melt-select-kernels.
  build/bin/melt-compile "$tmp/mini" --precision=bf16 --target=cuda \
    -o "$carry/models/mini-bf16.melt" 2>/dev/null
  build/bin/melt-compile "$tmp/mini" --precision=deepseek-v3 --target=cuda \
    -o "$carry/models/mini-fp8.melt" 2>/dev/null
  rm -rf "$tmp"
fi
# What users would run instead (benchmarks run it beside melt).
if [ -f ../shared/bench/hf_baseline.py ]; then
  cp ../shared/bench/hf_baseline.py "$carry/"
fi
du -sh "$carry"
