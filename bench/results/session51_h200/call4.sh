#!/usr/bin/env bash
# Session 51, call 4 (the closing run, commit 6d78eff's tree): mini with random weights beside
# transformers in one command: decode at batch 1, 16, 64 (prompt 128, 64 new) and prefill 1x1024
# and 8x1024 for the bf16 and deepseek-v3 policies, then hf_baseline.py env copy hf (at most 240 s).
#   bash bench/results/session51_h200/call4.sh
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
MELT_BASELINE_SECONDS=240 timeout 560 bash scripts/gpu/mini-model.sh > "$OUT/mini-model-log.txt" 2>&1
echo "mini-model rc=$?"
grep -c "differ" "$OUT/melt_run_stderr.txt" 2>/dev/null
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for line in open(f"{out}/mini_melt.json"):
    r = json.loads(line)
    keys = ["model", "batch", "prompt_tokens", "decode_tokens_per_s", "prefill_tokens_per_s",
            "decode_roofline_share", "copy_GBps", "decode_joules_per_token"]
    print({k: r.get(k) for k in keys if k in r})
PY
grep -v '^{"what": "env' "$OUT/mini_torch.json" | cut -c1-220 | head -40
