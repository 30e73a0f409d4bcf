"""What a user would run instead of melt's GEMMs: torch._scaled_mm with
DeepSeek-V3 block scales (1x128 activations, 128x128 weights; cuBLASLt
underneath) and a BF16 matmul, at the shapes and M of melt-bench-gemm, with
the same weight rotation (no weight found in L2). One JSON line each.

    python3 bench/cuda/gemm_torch.py [--quick | --large]
"""
import json
import sys
import time

import torch

SHAPES = [("q_a+kv_a (fused down)", 2112, 7168), ("q_b", 24576, 1536),
          ("o_proj", 7168, 16384), ("dense gate/up", 18432, 7168),
          ("dense down", 7168, 18432), ("expert gate/up", 2048, 7168)]
MS = ([1, 64, 4096] if "--quick" in sys.argv else
      [4096, 8192] if "--large" in sys.argv else [1, 16, 64, 128, 512, 4096, 8192])
ROTATE_BYTES = 256 << 20


_warmed = False


def warm_up(fn, copies):
    """At least 3 calls and 300 ms of them in the process's first measurement,
    10 ms later (BenchUtil.h's warmUp: clocks settle over the first tens of
    milliseconds of work)."""
    global _warmed
    min_seconds = 0.01 if _warmed else 0.3
    _warmed = True
    start = time.perf_counter()
    i = 0
    while True:
        fn(i % copies)
        i += 1
        if i >= 3 and i % 4 == 0:
            torch.cuda.synchronize()
            if time.perf_counter() - start >= min_seconds or i >= 100000:
                return


def time_us(fn, copies, iters=20):
    warm_up(fn, copies)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(iters):
        fn(i % copies)
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters * 1e3


def main():
    for name, n, k in SHAPES:
        copies = max(1, min(16, ROTATE_BYTES // (n * k)))
        w8 = [torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn) for _ in range(copies)]
        w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        for m in MS:
            x8 = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
            x16 = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            flops = 2.0 * m * n * k
            row = {"what": "gemm_torch", "shape": name, "m": m, "n": n, "k": k}
            sa = torch.ones(k // 128, m, device="cuda", dtype=torch.float32).t()
            for layout, sb in [("t", torch.ones(n // 128, k // 128, device="cuda").t()),
                               ("c", torch.ones(k // 128, n // 128, device="cuda"))]:
                try:
                    us = time_us(lambda i: torch._scaled_mm(
                        x8, w8[i].t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), copies)
                    row.update(fp8_us=round(us, 1), fp8_tflops=round(flops / us / 1e6, 1),
                               fp8_weight_GBps=round(n * k / us / 1e3, 1), fp8_layout=layout)
                    break
                except Exception as ex:  # noqa: BLE001 - report what torch says
                    row["fp8_error"] = str(ex)[:160]
            us = time_us(lambda i: x16 @ w16[i].t(), copies)
            row.update(bf16_us=round(us, 1), bf16_tflops=round(flops / us / 1e6, 1),
                       bf16_weight_GBps=round(2 * n * k / us / 1e3, 1))
            print(json.dumps(row), flush=True)
        del w8, w16
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
