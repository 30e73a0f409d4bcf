#!/usr/bin/env bash
# On the GPU machine: mini's prefills alone, melt beside transformers in the
# same command (mini-model.sh's closing run without the decode): melt-run
# --bench --warmup --repeat 3 at 1x1024 and 8x1024 for the given artifacts
# (default mini-bf16.melt and mini-fp8.melt), then hf_baseline.py's mini
# model (bf16, random weights) timed as its `hf` step times prefills, with
# its default and grouped_mm experts. JSON lines to
# $OUT/prefill_vs_hf.json.
#   scripts/gpu/prefill-vs-hf.sh [MODEL.melt...]
set -uo pipefail
source "$(dirname "$0")/common.sh"
models=${*:-mini-bf16.melt mini-fp8.melt}
build_gpu melt-run
log="$out/prefill_vs_hf.json"
: > "$log"
for model in $models; do
  build-gpu/bin/melt-run "$carry/models/$model" --random-weights \
    --device cuda:0 --bench --warmup --repeat 3 \
    --prompt-ids "$(prompt_ids 1024)" --max-new 1 --batch 1,8 2>/dev/null |
    sed "s/^{/{\"model\": \"$model\", /" | tee -a "$log"
done
python3 - "$carry" <<'PY' | tee -a "$log"
import sys
import torch
sys.path.insert(0, sys.argv[1])
import hf_baseline as hb

model = hb.hf_model()
for impl in (None, "grouped_mm"):
    if impl:
        model.set_experts_implementation(impl)
    with torch.no_grad():
        for b, s in [(1, 1024), (8, 1024)]:
            ids = torch.randint(2, 1000, (b, s), device="cuda")
            t = hb.timeit(lambda: model(ids, use_cache=False), warm=1, iters=3)
            hb.emit(what="hf_prefill", impl=impl or "default", batch=b, seq=s,
                    seconds=round(t, 4), tok_per_s=round(b * s / t, 1))
PY
