#!/usr/bin/env bash
# Session 52, call 3: the final tree's prefills beside transformers in the
# same command (scripts/gpu/prefill-vs-hf.sh: melt-run --bench --warmup
# --repeat 3 at 1x1024 and 8x1024 under both policies, then hf_baseline.py's
# mini with its default and grouped_mm experts).
#   bash bench/results/session52_h200/call3.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
timeout 300 bash scripts/gpu/prefill-vs-hf.sh
echo "prefill-vs-hf rc=$?"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
