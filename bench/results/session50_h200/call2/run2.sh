#!/usr/bin/env bash
# Session 50, call 2: the ping-pong grouped BF16 kernel: its tests, the grouped bench, mini-bf16's prefill with it and without.
export OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/.."
source scripts/gpu/common.sh
build_gpu melt-run melt-cuda-kernel-tests melt-bench-grouped-gemm 2>&1 | tail -5
timeout 120 build-gpu/bin/melt-cuda-kernel-tests --gtest_filter='*Grouped*' > "$OUT/kernel-tests-grouped.txt" 2>&1; echo "grouped tests rc=$?"
tail -3 "$OUT/kernel-tests-grouped.txt"; grep -m5 "Failure\|element\|FAILED" "$OUT/kernel-tests-grouped.txt"
timeout 150 build-gpu/bin/melt-bench-grouped-gemm --iters 10 > "$OUT/grouped-gemm.json" 2> "$OUT/grouped-gemm-log.txt"; echo "bench rc=$?"
python3 - "$OUT/grouped-gemm.json" <<'PY'
import json,sys
for l in open(sys.argv[1]):
    if not l.startswith('{'): continue
    d=json.loads(l)
    if d.get('what')!='grouped_gemm_melt': continue
    print(f"{d['model']:12s} {d['weights']:5s} {d['product']:55s} {d['us']:8.1f} us {d['tflops']:6.1f} TF  cublaslt bf16 {d['cublaslt_bf16_dense_us']:8.1f} us")
PY
ROUNDS=2 timeout 300 bash scripts/gpu/prefill-ab.sh MELT_CUDA_GROUPED_PINGPONG_PAIR=0 MELT_CUDA_GROUPED_PINGPONG_SINGLE=0 -- mini-bf16.melt > /dev/null 2>&1; echo "ab rc=$?"
cat "$OUT/prefill-ab.txt"
