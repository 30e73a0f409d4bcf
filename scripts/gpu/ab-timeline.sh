#!/usr/bin/env bash
# On the GPU machine: switches (MELT_CUDA_* and the like) compared by the
# span of a decode step's replayed graph (timeline.sh's CUPTI records: the
# steadiest figure of a step; melt-run's tokens/s at batch 1 moves by 10%
# from run to run). The variants run in turn, ROUNDS times over
# (alternating, so that the machine's drift falls on all of them alike).
#   scripts/gpu/ab-timeline.sh MODEL.melt BATCH VARIANT...
# VARIANT: "default" (the environment as it is) or NAME=VALUE[,NAME=VALUE]
# (e.g. MELT_CUDA_OVERLAP_KERNELS=0 or A=0,B=1). ROUNDS: 2 by default.
# Prints "MODEL bBATCH VARIANT round R: span S us, kernels K, between
# replays G us" (the gap from one replay's end to the next's start); a JSON line
# a run goes to $OUT/ab_timeline.json (with the run's timeline summary),
# the per-kernel table of each variant's last round to
# $OUT/ab-timeline-MODEL-bBATCH-VARIANT.txt.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: scripts/gpu/ab-timeline.sh MODEL.melt BATCH VARIANT..." >&2
  exit 2
fi
source "$(dirname "$0")/common.sh"
model=$1 batch=$2
shift 2
check_variants ab-timeline.sh "$@"
build_gpu melt-run melt-kernel-trace
for round in $(seq "${ROUNDS:-2}"); do
  for variant in "$@"; do
    variant_settings "$variant"
    env "${settings[@]}" bash "$(dirname "$0")/timeline.sh" "$model" "$batch" \
      > /dev/null
    summary="$out/timeline-$model-b$batch.json"
    python3 - "$summary" "$model" "$batch" "$variant" "$round" \
      "$out/ab_timeline.json" <<'PY'
import json, sys
path, model, batch, variant, rnd, results = sys.argv[1:]
graphs = [json.loads(line) for line in open(path) if line.strip()]
# The most replayed graph: the decode step's.
step = max(graphs, key=lambda g: g["replays"])
with open(results, "a") as f:
    f.write(json.dumps({"model": model, "batch": int(batch),
                        "variant": variant, "round": int(rnd), **step}) + "\n")
gap = step.get("between_replays") or {}
print(f"{model} b{batch} {variant} round {rnd}: span {step['span_us']:.1f} us,"
      f" kernels {step['kernels']}, between replays "
      f"{gap.get('gap_us', float('nan')):.1f} us")
PY
    cp "$out/timeline-$model-b$batch.txt" \
      "$out/ab-timeline-$model-b$batch-${variant//[=,]/_}.txt"
  done
done
