#!/usr/bin/env python3
"""Golden data from Hugging Face transformers, the reference no one here wrote.

Saves random-initialized DeepseekV3ForCausalLM checkpoints of small
configurations, with transformers' logits for fixed token sequences and its
greedy generations:

  v3-tiny       query compression, sigmoid scores + correction bias
                (noaux_tc), group-limited top-k, YaRN RoPE, F32 weights
  v2-lite-tiny  no query compression (q_lora_rank null), one group,
                two shared experts, no top-k normalization, F32 weights
  v3-tiny-fp8   v3-tiny with its Linear weights quantized to float8_e4m3fn in
                128x128 blocks with weight_scale_inv, as DeepSeek-V3 stores
                them; the reference runs on the dequantized weights
  v3-mla512     v3-tiny with DeepSeek's MLA dims where the GPU kernels key on
                them: kv_lora_rank 512, qk_rope_head_dim 64, 16 heads (so
                that melt-compile --target=cuda puts its MLA on tensor cores
                and the CUDA device's BF16 latent cache and decode kernel
                run on it); nope and value dims 16 keep it small

Run it where transformers is installed (the GPU machine):
  python3 scripts/golden/make_golden.py OUT_DIR
Layout: OUT_DIR/<name>/checkpoint/ (config.json, model.safetensors),
OUT_DIR/<name>/reference.safetensors (input_ids_i, logits_i),
OUT_DIR/<name>/reference.json (sequences, greedy generations, versions).
"""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

SEQUENCES = [
    [1, 17, 42, 99, 3, 250, 7, 128],
    [5, 5, 5, 200, 31, 64, 2, 9, 111, 77, 13, 180],
    [250, 1, 33],
]
GENERATE_NEW = 16
FP8_MAX = 448.0

BASE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=256,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=8,
    num_experts_per_tok=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    initializer_range=0.06,
    attention_bias=False,
    rope_interleave=True,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=None,
)

CONFIGS = {
    "v3-tiny": dict(
        BASE,
        q_lora_rank=32,
        n_shared_experts=1,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=64,
                             beta_fast=32.0, beta_slow=1.0, mscale=1.0,
                             mscale_all_dim=1.0),
    ),
    "v2-lite-tiny": dict(
        BASE,
        q_lora_rank=None,
        n_shared_experts=2,
        n_group=1,
        topk_group=1,
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
    ),
}
# Added after the three above: their seeds (their order) are unchanged.
CONFIGS["v3-mla512"] = dict(
    CONFIGS["v3-tiny"],
    kv_lora_rank=512,
    qk_rope_head_dim=64,
    num_attention_heads=16,
    num_key_value_heads=16,
)


def make_model(name, seed):
    torch.manual_seed(seed)
    config = DeepseekV3Config(**CONFIGS[name])
    config._attn_implementation = "eager"
    model = DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            # Norm scales near 1 rather than exactly 1, so that a missed
            # norm weight shows.
            if pname.endswith("norm.weight"):
                p.uniform_(0.8, 1.2)
        for bname, b in model.named_buffers():
            # A non-negative correction bias: every biased sigmoid score is
            # then positive, and transformers' 0.0 mask of dropped groups
            # selects exactly what DeepSeek's -inf mask selects.
            if bname.endswith("e_score_correction_bias"):
                b.uniform_(0.0, 0.1)
    return model


def is_fp8_linear(name, shape):
    """The Linear weights DeepSeek-V3 stores in FP8 (not embeddings, the head
    or the router gate)."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return False
    if "embed_tokens" in name or name.startswith("lm_head") or ".mlp.gate." in name:
        return False
    return "self_attn." in name or ".mlp." in name


def quantize_blocks(w):
    """128x128 block FP8: scale = amax / 448 per block; returns (q, scale_inv)
    with dequantized = q * scale_inv (edge blocks partial)."""
    rows, cols = w.shape
    rb, cb = (rows + 127) // 128, (cols + 127) // 128
    scale = torch.empty(rb, cb, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(rb):
        for j in range(cb):
            block = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].float()
            s = max(block.abs().max().item(), 1e-12) / FP8_MAX
            scale[i, j] = s
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (
                block / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequantize_blocks(q, scale):
    deq = q.float()
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            deq[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] *= scale[i, j]
    return deq


def reference(model, out_dir, extra):
    tensors, generations = {}, []
    with torch.no_grad():
        for i, seq in enumerate(SEQUENCES):
            ids = torch.tensor([seq], dtype=torch.long)
            logits = model(input_ids=ids).logits[0].float()
            tensors[f"input_ids_{i}"] = ids[0].to(torch.int64)
            tensors[f"logits_{i}"] = logits.contiguous()
            out = model.generate(ids, max_new_tokens=GENERATE_NEW, do_sample=False,
                                 pad_token_id=0)
            generations.append(out[0, len(seq):].tolist())
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
    meta = dict(
        sequences=SEQUENCES,
        greedy_new_tokens=generations,
        transformers=transformers.__version__,
        torch=torch.__version__,
        dtype="float32",
        attn_implementation="eager",
        **extra,
    )
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=2)


def make_fp8_variant(root, source, name):
    """Quantizes the Linear weights of `source`, stores them as DeepSeek-V3
    does, and takes the reference from transformers on the dequantized
    weights."""
    src = os.path.join(root, source, "checkpoint")
    ckpt = os.path.join(root, name, "checkpoint")
    os.makedirs(ckpt)
    state = load_file(os.path.join(src, "model.safetensors"))
    stored, dequantized = {}, {}
    for key, w in state.items():
        if is_fp8_linear(key, tuple(w.shape)):
            q, s = quantize_blocks(w)
            stored[key] = q
            stored[key + "_scale_inv"] = s
            dequantized[key] = dequantize_blocks(q, s)
        else:
            stored[key] = w
            dequantized[key] = w
    save_file(stored, os.path.join(ckpt, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = dict(quant_method="fp8", fmt="e4m3",
                                         activation_scheme="dynamic",
                                         weight_block_size=[128, 128])
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    # from_pretrained maps the per-expert tensor names onto transformers'
    # fused in-memory expert weights.
    deq_dir = os.path.join(root, "_dequantized")
    os.makedirs(deq_dir)
    save_file(dequantized, os.path.join(deq_dir, "model.safetensors"),
              metadata={"format": "pt"})
    shutil.copy(os.path.join(src, "config.json"), deq_dir)
    model = DeepseekV3ForCausalLM.from_pretrained(
        deq_dir, attn_implementation="eager", dtype=torch.float32).eval()
    shutil.rmtree(deq_dir)
    reference(model, os.path.join(root, name),
              dict(note="reference logits of the dequantized weights"))


def main():
    root = sys.argv[1]
    for seed, name in enumerate(CONFIGS):
        model = make_model(name, seed + 1)
        model.save_pretrained(os.path.join(root, name, "checkpoint"))
        reference(model, os.path.join(root, name), {})
        print(name, "saved;", sum(p.numel() for p in model.parameters()), "params")
    make_fp8_variant(root, "v3-tiny", "v3-tiny-fp8")
    print("v3-tiny-fp8 saved")


if __name__ == "__main__":
    main()
