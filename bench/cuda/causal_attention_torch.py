#!/usr/bin/env python3
"""torch's scaled_dot_product_attention (causal, BF16) at the shapes of
melt-bench-causal-attention: MLA's prefill decompressed (query and key dims
192, value dims 128), sequences x tokens x heads; the FLOPs counted the
same way (the causal products only). One JSON line per shape.

  python3 bench/cuda/causal_attention_torch.py [--iters N]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    shapes = [(8, 1024, 16), (1, 1024, 16), (1, 4096, 16), (8, 1024, 128),
              (1, 4096, 128)]
    warm_seconds = 0.3
    for sequences, tokens, heads in shapes:
        q = torch.randn(sequences, heads, tokens, 192, device="cuda",
                        dtype=torch.bfloat16)
        k = torch.randn_like(q)
        v = torch.randn(sequences, heads, tokens, 128, device="cuda",
                        dtype=torch.bfloat16)
        # At least 3 calls and 300 ms of them before the first measurement,
        # 10 ms before later ones (BenchUtil.h's warmUp).
        warm_start, calls = time.perf_counter(), 0
        while calls < 3 or time.perf_counter() - warm_start < warm_seconds:
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
            calls += 1
            if calls % 4 == 0:
                torch.cuda.synchronize()
        warm_seconds = 0.01
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
        stop.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(stop) / args.iters
        flops = 2.0 * (192 + 128) * heads * sequences * tokens * (tokens + 1) / 2
        print(json.dumps({"what": "causal_attention_torch",
                          "kernel": "sdpa", "sequences": sequences,
                          "tokens": tokens, "heads": heads,
                          "us": round(ms * 1e3, 1),
                          "tflops": round(flops / (ms * 1e-3) / 1e12, 1)}))


if __name__ == "__main__":
    main()
