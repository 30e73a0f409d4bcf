#!/usr/bin/env python3
"""The malformed-input corpus of melt-import.

Writes small synthetic checkpoints with melt-import itself, damages copies of
them one way each (config.json, model.safetensors.index.json, safetensors
headers and data, tensors that do not fit the model), and checks that
melt-import fails with exit code 1 — never a crash, a sanitizer report or a
hang — and that its message names the file and the tensor or field. A few
cases must succeed (ignored fields, unused tensors as a warning).

  corpus.py --tool PATH/melt-import --work DIR [--filter SUBSTRING]
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

TIMEOUT_S = 60


# --- safetensors helpers -----------------------------------------------------

def read_st(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_st(path, header, body, raw=None):
    text = raw if raw is not None else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + body)


def edit_header(path, fn):
    header, body = read_st(path)
    fn(header)
    write_st(path, header, body)


def tensors_by_offset(header):
    return sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"][0])


def remove_tensor(path, name):
    header, body = read_st(path)
    begin, end = header[name]["data_offsets"]
    del header[name]
    for k in tensors_by_offset(header):
        b, e = header[k]["data_offsets"]
        if b >= end:
            header[k]["data_offsets"] = [b - (end - begin), e - (end - begin)]
    write_st(path, header, body[:begin] + body[end:])


def add_tensor(path, name, dtype, shape, payload):
    header, body = read_st(path)
    header[name] = {"dtype": dtype, "shape": shape,
                    "data_offsets": [len(body), len(body) + len(payload)]}
    write_st(path, header, body + payload)


def tensor_bytes(path, name):
    header, body = read_st(path)
    b, e = header[name]["data_offsets"]
    return body[b:e]


def set_tensor_bytes(path, name, payload):
    header, body = read_st(path)
    b, e = header[name]["data_offsets"]
    assert len(payload) == e - b
    write_st(path, header, body[:b] + payload + body[e:])


def shard_of(ckpt, tensor):
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if not os.path.exists(index):
        return os.path.join(ckpt, "model.safetensors")
    return os.path.join(ckpt, json.load(open(index))["weight_map"][tensor])


def edit_json(path, fn):
    data = json.load(open(path))
    fn(data)
    json.dump(data, open(path, "w"), indent=1)


def edit_config(fn):
    return lambda d: edit_json(os.path.join(d, "config.json"), fn)


def set_field(key, value):
    def fn(c):
        c[key] = value
    return edit_config(fn)


def del_field(key):
    def fn(c):
        del c[key]
    return edit_config(fn)


def set_quant(key, value):
    def fn(c):
        c["quantization_config"][key] = value
    return edit_config(fn)


def write_text(name, text):
    def fn(d):
        with open(os.path.join(d, name), "wb") as f:
            f.write(text if isinstance(text, bytes) else text.encode())
    return fn


def index_edit(fn):
    return lambda d: edit_json(os.path.join(d, "model.safetensors.index.json"), fn)


def first_shard(d):
    return os.path.join(d, sorted(f for f in os.listdir(d)
                                  if f.endswith(".safetensors"))[0])


def on_shard(fn):
    """Applies fn(path) to the first shard (the only file of a single-file
    checkpoint)."""
    return lambda d: fn(first_shard(d))


def raw_shard(data):
    return on_shard(lambda p: open(p, "wb").write(data))


def header_text(fn):
    """Rewrites the raw JSON text of the first shard's header."""
    def apply(path):
        header, body = read_st(path)
        text = fn(json.dumps(header)).encode()
        write_st(path, None, body, raw=text)
    return on_shard(apply)


def grow_last(header):
    """Makes the last tensor 32 elements longer than the file holds."""
    last = header[tensors_by_offset(header)[-1]]
    b, e = last["data_offsets"]
    count = 1
    for d in last["shape"]:
        count *= d
    last["shape"] = [count + 32]
    last["data_offsets"] = [b, e + 64]


def tensor_edit(fn):
    """fn(header, name_of_second_tensor) edits the first shard's header."""
    def apply(path):
        header, body = read_st(path)
        fn(header, tensors_by_offset(header)[1])
        write_st(path, header, body)
    return on_shard(apply)


def escape_by_symlink(shard):
    """Moves a shard out of the checkpoint and leaves a symlink to it."""
    outside = os.path.join(os.path.dirname(os.path.dirname(shard)), "outside.safetensors")
    shutil.move(shard, outside)
    os.symlink(os.path.abspath(outside), shard)


# --- the cases ----------------------------------------------------------------
# (name, base checkpoint, mutation, expected substrings of stderr, must succeed)

O_PROJ = "model.layers.0.self_attn.o_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"
Q_A = "model.layers.0.self_attn.q_a_proj.weight"
Q_A_SCALE = Q_A + "_scale_inv"
EXPERT3 = "model.layers.1.mlp.experts.3.gate_proj.weight"


def on_tensor_shard(tensor, fn):
    return lambda d: fn(shard_of(d, tensor))


CASES = [
    # config.json
    ("config-syntax", "bf16", write_text("config.json", '{"model_type": "deepseek_v3",\n "hidden_size": 128\n "vocab_size": 512}'),
     ["config.json: 3:2: invalid JSON"], False),
    ("config-not-object", "bf16", write_text("config.json", "[1, 2]"), ["config.json: must hold a JSON object"], False),
    ("config-missing-field", "bf16", del_field("hidden_size"), ["config.json: 'hidden_size': required field is missing"], False),
    ("config-wrong-type", "bf16", set_field("hidden_size", "128"), ["'hidden_size': must be an integer, got a string"], False),
    ("config-negative", "bf16", set_field("num_hidden_layers", -3), ["'num_hidden_layers': must be positive, got -3"], False),
    ("config-topk-exceeds-experts", "bf16", set_field("num_experts_per_tok", 9), ["'num_experts_per_tok': (9) exceeds n_routed_experts (8)"], False),
    ("config-topk-group", "bf16", set_field("topk_group", 5), ["'topk_group': (5) exceeds n_group (4)"], False),
    ("config-n-group-divides", "bf16", set_field("n_group", 3), ["'n_group': (3) does not divide n_routed_experts (8)"], False),
    ("config-dense-replace", "bf16", set_field("first_k_dense_replace", 7), ["'first_k_dense_replace': (7) exceeds num_hidden_layers (3)"], False),
    ("config-quant-method", "fp8", set_quant("quant_method", "awq"), ["'quantization_config.quant_method': unsupported quantization \"awq\""], False),
    ("config-quant-fmt", "fp8", set_quant("fmt", "e5m2"), ["'quantization_config.fmt': unsupported FP8 format \"e5m2\""], False),
    ("config-block-size", "fp8", set_quant("weight_block_size", [64, 64]), ["'quantization_config.weight_block_size': unsupported block [64, 64]"], False),
    ("config-scoring", "bf16", set_field("scoring_func", "relu"), ["'scoring_func': unsupported value \"relu\""], False),
    ("config-topk-method", "bf16", set_field("topk_method", "random"), ["'topk_method': unsupported value \"random\""], False),
    ("config-rope-type", "bf16", set_field("rope_scaling", {"type": "dynamic", "factor": 2.0}), ["'rope_scaling.type': unsupported RoPE scaling \"dynamic\""], False),
    ("config-model-type", "bf16", set_field("model_type", "llama"), ["'model_type': unsupported model type \"llama\""], False),
    ("config-duplicate-key", "bf16", write_text("config.json", '{"model_type": "deepseek_v3", "model_type": "deepseek_v2"}'), ["config.json: 1:31: duplicate key \"model_type\""], False),
    ("config-utf8", "bf16", write_text("config.json", b'{"model_type": "deepseek\xff"}'), ["config.json: 1:25: invalid UTF-8"], False),
    ("config-qk-head-dim", "bf16", set_field("qk_head_dim", 99), ["'qk_head_dim': (99) must equal qk_nope_head_dim + qk_rope_head_dim (24)"], False),
    ("config-kv-heads", "bf16", set_field("num_key_value_heads", 1), ["'num_key_value_heads': (1) must equal num_attention_heads (4)"], False),
    ("config-activation", "bf16", set_field("hidden_act", "gelu"), ["'hidden_act': unsupported activation \"gelu\""], False),
    ("config-infinite", "bf16", write_text("config.json", '{"model_type": "deepseek_v3", "rope_theta": 1e400}'), ["'rope_theta': must be finite"], False),
    ("config-absent", "bf16", lambda d: os.remove(os.path.join(d, "config.json")), ["has no config.json"], False),
    ("config-dtype", "bf16", set_field("torch_dtype", "int8"), ["'torch_dtype': unsupported dtype \"int8\""], False),
    ("config-yarn-factor", "bf16", set_field("rope_scaling", {"type": "yarn", "factor": 0.5, "original_max_position_embeddings": 128}), ["'rope_scaling.factor': must be >= 1"], False),
    ("config-remote-code-ignored", "bf16", set_field("auto_map", {"AutoModel": "modeling_deepseek.DeepseekV3Model"}), [], True),
    # safetensors: header framing
    ("st-shorter-than-prefix", "single", raw_shard(b"\x05\x00"), ["model.safetensors: is 2 bytes, too short for the 8-byte header length"], False),
    ("st-header-over-100mb", "single", raw_shard(struct.pack("<Q", 200_000_000) + b"{}"), ["header length 200000000 exceeds the 100 MB limit"], False),
    ("st-header-past-end", "single", raw_shard(struct.pack("<Q", 4096) + b'{"a": 1}'), ["header length 4096 runs past the end of the 16-byte file"], False),
    ("st-header-not-json", "single", raw_shard(struct.pack("<Q", 6) + b"{nope}"), ["model.safetensors: 1:2: invalid JSON"], False),
    ("st-header-utf8", "single", raw_shard(struct.pack("<Q", 8) + b'{"\xff": 1}'), ["model.safetensors: 1:3: invalid UTF-8"], False),
    ("st-header-array", "single", raw_shard(struct.pack("<Q", 2) + b"[]"), ["header must be a JSON object"], False),
    ("st-empty-file", "single", raw_shard(b""), ["is 0 bytes, too short"], False),
    # safetensors: entries
    ("st-unknown-dtype", "single", tensor_edit(lambda h, t: h[t].update(dtype="F7")), ["unknown dtype \"F7\""], False),
    ("st-dtype-size-mismatch", "single", tensor_edit(lambda h, t: h[t].update(dtype="F32")), ["of F32 needs", "but data_offsets"], False),
    ("st-shape-overflow", "single", tensor_edit(lambda h, t: h[t].update(shape=[2**40, 2**40])), ["has more elements than 64 bits can count"], False),
    ("st-shape-bytes-overflow", "single", tensor_edit(lambda h, t: h[t].update(shape=[2**31, 2**31, 2])), ["larger than 64 bits can count"], False),
    ("st-negative-shape", "single", tensor_edit(lambda h, t: h[t].update(shape=[-1, 128])), ["'shape' must be an array of non-negative integers"], False),
    ("st-offsets-arity", "single", tensor_edit(lambda h, t: h[t].update(data_offsets=[0])), ["'data_offsets' must be [begin, end]"], False),
    ("st-offsets-reversed", "single", tensor_edit(lambda h, t: h[t].update(data_offsets=[h[t]["data_offsets"][1], h[t]["data_offsets"][0]])), ["end before they begin"], False),
    ("st-unknown-field", "single", tensor_edit(lambda h, t: h[t].update(extra=1)), ["unknown field 'extra'"], False),
    ("st-metadata-not-string", "single", tensor_edit(lambda h, t: h.__setitem__("__metadata__", {"format": 1})), ["'__metadata__.format' must be a string"], False),
    ("st-duplicate-tensor", "single", header_text(lambda s: s[:-1] + ', "model.embed_tokens.weight": {"dtype": "BF16", "shape": [0], "data_offsets": [0, 0]}}'), ["duplicate key \"model.embed_tokens.weight\""], False),
    # safetensors: layout of the data area
    ("st-overlap", "single", tensor_edit(lambda h, t: h[t].update(data_offsets=[h[t]["data_offsets"][0] - 2, h[t]["data_offsets"][1] - 2])), ["overlap tensor"], False),
    ("st-gap", "single", tensor_edit(lambda h, t: h[t].update(data_offsets=[h[t]["data_offsets"][0] + 2, h[t]["data_offsets"][1] + 2])), ["leave a gap after tensor"], False),
    ("st-first-not-zero", "single", lambda d: edit_header(first_shard(d), lambda h: [h[k].update(data_offsets=[h[k]["data_offsets"][0] + 2, h[k]["data_offsets"][1] + 2]) for k in tensors_by_offset(h)]), ["the first tensor starts at byte 2, not 0"], False),
    ("st-truncated", "single", on_shard(lambda p: os.truncate(p, os.path.getsize(p) - 10)), ["past the", "data area (file truncated?)"], False),
    ("st-trailing-bytes", "single", on_shard(lambda p: open(p, "ab").write(b"\0" * 16)), ["16 trailing bytes after the last tensor"], False),
    ("st-out-of-bounds", "single", on_shard(lambda p: edit_header(p, grow_last)), ["past the", "data area"], False),
    # tensors against the model
    ("model-missing-tensor", "bf16", lambda d: (remove_tensor(shard_of(d, O_PROJ), O_PROJ), index_edit(lambda i: i["weight_map"].pop(O_PROJ))(d)), ["missing tensor 'model.layers.0.self_attn.o_proj.weight' (expected BF16 [128, 64])"], False),
    ("model-wrong-shape", "bf16", on_tensor_shard(O_PROJ, lambda p: edit_header(p, lambda h: h[O_PROJ].update(shape=[64, 128]))), ["tensor 'model.layers.0.self_attn.o_proj.weight': expected BF16 [128, 64], got BF16 [64, 128]"], False),
    ("model-wrong-dtype", "bf16", on_tensor_shard(NORM, lambda p: edit_header(p, lambda h: h[NORM].update(dtype="I16"))), ["tensor 'model.layers.0.input_layernorm.weight': expected BF16 [128], got I16 [128]"], False),
    ("model-expert-dtype", "bf16", on_tensor_shard(EXPERT3, lambda p: edit_header(p, lambda h: h[EXPERT3].update(dtype="F16"))), ["tensor 'model.layers.1.mlp.experts.3.gate_proj.weight': expected BF16 [64, 128], got F16 [64, 128]"], False),
    ("model-fp8-not-fp8", "fp8", on_tensor_shard(Q_A, lambda p: edit_header(p, lambda h: h[Q_A].update(dtype="U8"))), ["tensor 'model.layers.0.self_attn.q_a_proj.weight': expected F8_E4M3 [64, 128], got U8 [64, 128]"], False),
    ("model-scale-shape", "fp8", on_tensor_shard(Q_A_SCALE, lambda p: (remove_tensor(p, Q_A_SCALE), add_tensor(p, Q_A_SCALE, "F32", [2, 1], struct.pack("<2f", 1.0, 1.0)))), ["tensor 'model.layers.0.self_attn.q_a_proj.weight_scale_inv': expected F32 [1, 1], got F32 [2, 1]"], False),
    ("model-scale-dtype", "fp8", on_tensor_shard(Q_A_SCALE, lambda p: (remove_tensor(p, Q_A_SCALE), add_tensor(p, Q_A_SCALE, "F16", [1, 1], b"\0\x3c"))), ["weight_scale_inv': expected F32 [1, 1], got F16 [1, 1]"], False),
    ("model-scale-nan", "fp8", on_tensor_shard(Q_A_SCALE, lambda p: set_tensor_bytes(p, Q_A_SCALE, struct.pack("<f", float("nan")))), ["tensor 'model.layers.0.self_attn.q_a_proj.weight_scale_inv': scale 0 is nan"], False),
    ("model-scale-missing", "fp8", lambda d: (remove_tensor(shard_of(d, Q_A_SCALE), Q_A_SCALE), index_edit(lambda i: i["weight_map"].pop(Q_A_SCALE))(d)), ["missing tensor 'model.layers.0.self_attn.q_a_proj.weight_scale_inv' (expected F32 [1, 1])"], False),
    ("model-unused-tensor", "single", on_shard(lambda p: add_tensor(p, "model.extra.weight", "F32", [2], b"\0" * 8)), ["warning", "1 tensor(s) are not used by the model: model.extra.weight"], True),
    # the index
    ("index-syntax", "bf16", write_text("model.safetensors.index.json", '{"weight_map": {'), ["model.safetensors.index.json: 1:16: invalid JSON"], False),
    ("index-no-weight-map", "bf16", write_text("model.safetensors.index.json", '{"metadata": {}}'), ["'weight_map' must be an object"], False),
    ("index-path-traversal", "bf16", index_edit(lambda i: i["weight_map"].__setitem__(O_PROJ, "../outside.safetensors")), ["shard '../outside.safetensors' is not a path inside the checkpoint directory"], False),
    ("index-absolute-path", "bf16", index_edit(lambda i: i["weight_map"].__setitem__(O_PROJ, "/etc/passwd")), ["shard '/etc/passwd' is not a path inside the checkpoint directory"], False),
    ("index-missing-shard", "bf16", lambda d: os.remove(shard_of(d, O_PROJ)), ["named by the index does not exist"], False),
    ("index-wrong-shard", "bf16", lambda d: index_edit(lambda i: i["weight_map"].__setitem__(O_PROJ, sorted(set(i["weight_map"].values()))[-1]))(d), ["tensor 'model.layers.0.self_attn.o_proj.weight'", "the index places it in"], False),
    ("index-tensor-in-two-shards", "bf16", lambda d: add_tensor(os.path.join(d, sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))[-1]), O_PROJ, "BF16", [128, 64], b"\0" * (128 * 64 * 2)), ["tensor 'model.layers.0.self_attn.o_proj.weight' is also in shard"], False),
    ("index-not-listed", "bf16", index_edit(lambda i: i["weight_map"].pop(O_PROJ)), ["tensor 'model.layers.0.self_attn.o_proj.weight' is not in the index"], False),
    ("index-lists-absent", "bf16", index_edit(lambda i: i["weight_map"].__setitem__("model.ghost.weight", i["weight_map"][O_PROJ])), ["tensor 'model.ghost.weight' is missing from its shard"], False),
    ("index-symlink-escape", "bf16", lambda d: escape_by_symlink(first_shard(d)), ["resolves to a file outside the checkpoint directory"], False),
    ("no-weights", "single", lambda d: os.remove(os.path.join(d, "model.safetensors")), ["holds neither model.safetensors nor model.safetensors.index.json"], False),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tool", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--filter", default="")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    # LLVM's allocators poison memory when the including code is built with
    # ASan while the prebuilt LLVM/MLIR libraries are not: that is not ours
    # to report (allow_user_poisoning=0). Sanitizer exit codes differ from
    # melt-import's 1, so a report fails the case.
    env = dict(os.environ,
               ASAN_OPTIONS="exitcode=86:detect_leaks=1:allow_user_poisoning=0",
               UBSAN_OPTIONS="halt_on_error=1:exitcode=87:print_stacktrace=1")
    bases = {
        "bf16": ["--synthesize=tiny", "--shard-size=400000"],
        "fp8": ["--synthesize=tiny", "--dtype=fp8", "--shard-size=400000"],
        "single": ["--synthesize=tiny"],
    }
    for name, flags in bases.items():
        subprocess.run([args.tool, *flags, "-o", os.path.join(args.work, "base-" + name)],
                       check=True, capture_output=True, env=env)
    passed, failed = 0, 0
    for name, base, mutate, expected, must_succeed in CASES:
        if args.filter not in name:
            continue
        case_dir = os.path.join(args.work, name, "ckpt")
        shutil.copytree(os.path.join(args.work, "base-" + base), case_dir)
        mutate(case_dir)
        try:
            run = subprocess.run([args.tool, case_dir, "-o", os.path.join(args.work, name, "out.mlir")],
                                 capture_output=True, text=True, errors="replace",
                                 timeout=TIMEOUT_S, env=env)
            rc, err = run.returncode, run.stderr
        except subprocess.TimeoutExpired:
            rc, err = None, "timed out"
        problems = []
        want_rc = 0 if must_succeed else 1
        if rc != want_rc:
            problems.append(f"exit code {rc}, expected {want_rc}")
        if "Sanitizer" in err or "runtime error:" in err:
            problems.append("sanitizer report")
        for text in expected:
            if text not in err:
                problems.append(f"message lacks {text!r}")
        out = os.path.join(args.work, name, "out.mlir")
        if not must_succeed and os.path.exists(out):
            problems.append("wrote an output file although it failed")
        if problems:
            failed += 1
            print(f"FAIL {name}: {'; '.join(problems)}\n  stderr: {err.strip()[:2000]}")
        else:
            passed += 1
            print(f"ok   {name}: {err.strip().splitlines()[-1] if err.strip() else '(no output)'}"[:240])
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
