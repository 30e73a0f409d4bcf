#!/usr/bin/env python3
"""CPU decode and prefill against the memory-bandwidth roofline and oneDNN.

A DeepSeek-V3-style model of 0.73 B parameters (bench_model.json: 14
layers, MLA, 8 experts top-2 + 1 shared, BF16 weights) is synthesized,
compiled for the CPU and run by melt-run: prompt 128, 32 new tokens,
batch 1. In the same run:
  - copy bandwidth (membw.c, bytes read + written per second);
  - roofline = bandwidth / weight bytes read per decode step (every weight
    but the embedding table and the unselected experts);
  - oneDNN's own bf16 matmul rate at M = 128 on the model's projection
    shapes (onednn_gemm.cpp), against melt's prefill GFLOP/s.
Prints JSON lines.  bench/cpu/decode.py [--build build] [--work build/bench]
"""
import argparse
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def model_shapes(c):
    """(K, N) of every projection a token goes through at decode, with how
    many times it runs: attention, dense MLPs, shared + 2 active experts,
    the head."""
    h, heads = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    attn = [(h, c["q_lora_rank"]), (c["q_lora_rank"], heads * qk),
            (h, c["kv_lora_rank"] + c["qk_rope_head_dim"]),
            (c["kv_lora_rank"], heads * (c["qk_nope_head_dim"] + c["v_head_dim"])),
            (heads * c["v_head_dim"], h)]
    dense = [(h, c["intermediate_size"])] * 2 + [(c["intermediate_size"], h)]
    inter = c["moe_intermediate_size"]
    expert = [(h, inter)] * 2 + [(inter, h)]
    shared = [(h, inter * c["n_shared_experts"])] * 2 + [(inter * c["n_shared_experts"], h)]
    layers, first = c["num_hidden_layers"], c["first_k_dense_replace"]
    shapes = attn * layers + dense * first
    moe = layers - first
    shapes += (shared + expert * c["num_experts_per_tok"]) * moe
    shapes += [(h, c["n_routed_experts"])] * moe  # router
    shapes += [(h, c["vocab_size"])]            # head
    return shapes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default=os.path.join(HERE, "..", "..", "build"))
    p.add_argument("--work", default=None)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=32)
    args = p.parse_args()
    bin_dir = os.path.join(args.build, "bin")
    work = args.work or os.path.join(args.build, "bench")
    os.makedirs(work, exist_ok=True)

    membw = os.path.join(work, "membw")
    gemm = os.path.join(work, "onednn_gemm")
    sh(["cc", "-O2", "-fopenmp", os.path.join(HERE, "membw.c"), "-o", membw])
    sh(["c++", "-O2", "-std=c++17", os.path.join(HERE, "onednn_gemm.cpp"), "-ldnnl", "-o", gemm])

    config_path = os.path.join(HERE, "bench_model.json")
    config = json.load(open(config_path))
    ckpt = os.path.join(work, "bench-model")
    if not os.path.exists(ckpt):
        sh([os.path.join(bin_dir, "melt-import"), f"--synthesize={config_path}", "-o", ckpt])
    artifact = os.path.join(work, "bench-model.melt")
    sh([os.path.join(bin_dir, "melt-compile"), ckpt, "-o", artifact])

    bw = json.loads(sh([membw]))
    print(json.dumps(bw))
    shapes = model_shapes(config)
    active_params = sum(k * n for k, n in shapes)
    step_bytes = active_params * 2  # bf16
    prompt = ",".join(str((i * 7919) % config["vocab_size"]) for i in range(args.prompt))
    run = json.loads(sh([os.path.join(bin_dir, "melt-run"), artifact, "--checkpoint", ckpt,
                         "--prompt-ids", prompt, "--max-new", str(args.new), "--bench"]))
    roofline = bw["gb_per_s"] * 1e9 / step_bytes
    print(json.dumps({"bench": "cpu_decode_b1", "model_params": active_params,
                      "weight_bytes_per_step": step_bytes,
                      "decode_tokens_per_s": run["decode_tokens_per_s"],
                      "roofline_tokens_per_s": round(roofline, 2),
                      "fraction_of_roofline": round(run["decode_tokens_per_s"] / roofline, 3),
                      "peak_memory_mb": run["peak_memory_mb"]}))
    prefill_gflops = run["prefill_tokens_per_s"] * 2 * active_params / 1e9
    flat = [str(x) for kn in set(shapes) for x in kn]
    onednn = json.loads(sh([gemm, str(args.prompt), *flat]))
    print(json.dumps({"bench": "cpu_prefill", "tokens": args.prompt,
                      "prefill_tokens_per_s": run["prefill_tokens_per_s"],
                      "prefill_gflop_per_s": round(prefill_gflops, 1),
                      "onednn_gflop_per_s_same_shapes": onednn["gflop_per_s"],
                      "fraction_of_onednn": round(prefill_gflops / onednn["gflop_per_s"], 3)}))


if __name__ == "__main__":
    main()
