#!/usr/bin/env bash
# For the next session's first GPU call (written in session 52, not run: no
# machine was free for call 4). Two things the next steps need:
# 1. where the final tree's 8x1024 prefills spend their time (call4.sh: the
#    CUPTI trace of both policies; session 50's call 1 was the last one, before
#    the attention's L2 sets and TMA and the combine in the norm);
# 2. which instructions of the wgmma causal attention its warps stall on:
#    session 51's call 6 had the stall reasons but no instructions (its text
#    report prints none), so this saves the report and prints the source
#    page's SASS with the stall-sampling columns, the most-sampled rows first.
#   bash bench/results/session52_h200/next-call.sh   (there, after prepare.sh --mini here)
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/../../.."
bash bench/results/session52_h200/call4.sh
source scripts/gpu/common.sh
build_gpu melt-bench-causal-attention 2>&1 | tail -1
timeout 180 ncu --clock-control none -k regex:causalAttentionWarpgroupKernel -c 1 \
  --section SourceCounters --section WarpStateStats --import-source yes \
  -o "$OUT/attention-stalls" build-gpu/bin/melt-bench-causal-attention --iters 1 \
  > "$OUT/ncu-collect.txt" 2>&1
echo "ncu collect rc=$?"
timeout 60 ncu -i "$OUT/attention-stalls.ncu-rep" --page source --print-source sass --csv \
  > "$OUT/attention-stalls-sass.csv" 2> "$OUT/ncu-source-err.txt"
echo "ncu source page rc=$? ($(wc -l < "$OUT/attention-stalls-sass.csv") lines)"
python3 - "$OUT/attention-stalls-sass.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
if not rows:
    sys.exit("no source page (see ncu-source-err.txt)")
head = rows[0]
# The sampling column: all samples per instruction (names differ by version).
col = next((i for i, h in enumerate(head) if 'Sampling' in h and 'All' in h), None)
if col is None:
    col = next((i for i, h in enumerate(head) if 'Sampling' in h), None)
if col is None:
    sys.exit("columns: " + ", ".join(head))
def num(s):
    try:
        return float(s.replace(',', ''))
    except ValueError:
        return 0.0
body = sorted(rows[1:], key=lambda r: -num(r[col]) if len(r) > col else 0)
total = sum(num(r[col]) for r in rows[1:] if len(r) > col)
print(f"{head[col]}: {total:.0f} samples; the 40 most sampled instructions:")
for r in body[:40]:
    print(f"{num(r[col]):8.0f}  " + "  ".join(c for c in r[:3]))
PY
