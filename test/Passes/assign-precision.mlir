// melt-assign-precision: the deepseek-v3 recipe, bf16, fp32, overrides.
// RUN: melt-import --builtin=tiny | melt-opt --melt-assign-precision | FileCheck %s --check-prefix=V3
// RUN: melt-import --builtin=v3 | melt-opt --melt-assign-precision | FileCheck %s --check-prefix=FP8CKPT --implicit-check-not="melt.storage = f8E4M3FN"
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=bf16=layers.0-1,lm_head,shared_experts' | FileCheck %s --check-prefix=KEEP
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=policy=bf16' | FileCheck %s --check-prefix=BF16 --implicit-check-not=melt.quantize
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=policy=fp32' | FileCheck %s --check-prefix=FP32 --implicit-check-not=melt.quantize --implicit-check-not=melt.storage
// RUN: not melt-opt %s '--melt-assign-precision=policy=int4' 2>&1 | FileCheck %s --check-prefix=BAD
// Small IR, before and after (the sections at the end of this file).
// RUN: melt-opt %s --split-input-file --melt-assign-precision | FileCheck %s --check-prefix=SMALL
// RUN: melt-opt %s --split-input-file '--melt-assign-precision=bf16-ops=linear' | FileCheck %s --check-prefix=SMALLBF16
// By op kind, and from a JSON policy file.
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=bf16-ops=moe_experts' | FileCheck %s --check-prefix=OPKIND
// RUN: rm -rf %t && mkdir -p %t
// RUN: echo '{"policy": "deepseek-v3", "bf16": ["lm_head", "layers.0-1"], "bf16_ops": ["moe_experts"]}' > %t/policy.json
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=policy-file=%t/policy.json' | FileCheck %s --check-prefix=FILE
// RUN: echo '{"policy": "bf16", "bf16": "lm_head"}' > %t/type.json
// RUN: not melt-opt %s '--melt-assign-precision=policy-file=%t/type.json' 2>&1 | FileCheck %s --check-prefix=FILETYPE
// RUN: echo '{"polcy": "bf16"}' > %t/key.json
// RUN: not melt-opt %s '--melt-assign-precision=policy-file=%t/key.json' 2>&1 | FileCheck %s --check-prefix=FILEKEY
// RUN: echo '{"policy": "bf16",' > %t/syntax.json
// RUN: not melt-opt %s '--melt-assign-precision=policy-file=%t/syntax.json' 2>&1 | FileCheck %s --check-prefix=FILESYNTAX
// RUN: not melt-opt %s '--melt-assign-precision=policy-file=%t/missing.json' 2>&1 | FileCheck %s --check-prefix=FILEMISSING
// RUN: not melt-opt %s '--melt-assign-precision=bf16-ops=attention' 2>&1 | FileCheck %s --check-prefix=OPBAD

// A BF16 checkpoint: its GEMM weights become FP8 128x128 blocks at load.
// V3: melt.weight @model.layers.0.self_attn.q_a_proj : tensor<64x128xbf16> {{.+}} {melt.storage = f8E4M3FN}
// Norms in FP32, with BF16 output.
// V3: melt.rms_norm %{{.+}}, @model.layers.0.input_layernorm {{.+}}precision = #melt.precision<compute = f32, accumulate = f32, output = bf16>
// FP8 GEMM: activations quantized in 1x128 blocks in front of it.
// V3: %[[Q:.+]], %[[S:.+]] = melt.quantize %{{.+}} {block = array<i64: 1, 128>} : tensor<?x128xbf16> -> tensor<?x128xf8E4M3FN>, tensor<?x1xf32>
// V3: %[[X:.+]] = melt.dequantize %[[Q]], %[[S]] {block = array<i64: 1, 128>}
// V3: melt.linear %[[X]], @model.layers.0.self_attn.q_a_proj {precision = #melt.precision<compute = f8E4M3FN, accumulate = f32, output = bf16, act_block = [1, 128], weight_block = [128, 128]>}
// The router: BF16 in, FP32 scores; experts in FP8 after an FP8 dispatch.
// V3: melt.moe_router {{.+}}precision = #melt.precision<compute = bf16, accumulate = f32, output = f32>
// V3: melt.moe_experts {{.+}}precision = #melt.precision<compute = f8E4M3FN
// The head in BF16; MTP: eh_proj BF16, its block FP8.
// V3: melt.logits {{.+}}precision = #melt.precision<compute = bf16, accumulate = f32, output = f32>
// V3-LABEL: func.func @mtp_0
// V3: melt.mtp_combine {{.+}}precision = #melt.precision<compute = bf16, accumulate = f32, output = bf16>
// V3: melt.linear {{.+}}compute = f8E4M3FN

// An FP8 checkpoint stays FP8 with its own scales (no round trip).
// FP8CKPT: melt.linear {{.+}}, @model.layers.0.self_attn.q_a_proj {precision = #melt.precision<compute = f8E4M3FN

// Overrides: layers 0-1, the head and the shared experts stay BF16.
// KEEP: melt.linear %{{.+}}, @model.layers.0.self_attn.q_a_proj {precision = #melt.precision<compute = bf16
// KEEP: melt.linear %{{.+}}, @model.layers.1.mlp.shared_experts.gate_proj {precision = #melt.precision<compute = bf16
// KEEP: melt.linear %{{.+}}, @model.layers.2.self_attn.q_a_proj {precision = #melt.precision<compute = f8E4M3FN

// BF16: melt.linear %{{.+}}, @model.layers.0.self_attn.q_a_proj {precision = #melt.precision<compute = bf16, accumulate = f32, output = bf16>}
// FP32: melt.linear %{{.+}}, @model.layers.0.self_attn.q_a_proj {precision = #melt.precision<compute = f32, accumulate = f32, output = f32>}

// BAD: error: melt-assign-precision: policy must be deepseek-v3, bf16, fp32 or auto, not 'int4'

// OPKIND: melt.linear %{{.+}}, @model.layers.0.self_attn.q_a_proj {precision = #melt.precision<compute = f8E4M3FN
// OPKIND: melt.moe_experts {{.+}}precision = #melt.precision<compute = bf16
// FILE: melt.linear %{{.+}}, @model.layers.0.self_attn.q_a_proj {precision = #melt.precision<compute = bf16
// FILE: melt.linear %{{.+}}, @model.layers.2.self_attn.q_a_proj {precision = #melt.precision<compute = f8E4M3FN
// FILE: melt.moe_experts {{.+}}precision = #melt.precision<compute = bf16
// FILE: melt.logits {{.+}}precision = #melt.precision<compute = bf16
// FILETYPE: error: melt-assign-precision: {{.*}}type.json: 'bf16' must be a list of strings
// FILEKEY: error: melt-assign-precision: {{.*}}key.json: unknown key 'polcy' (keys: policy, bf16, bf16_ops, budget)
// FILESYNTAX: error: melt-assign-precision: {{.*}}syntax.json: {{.+}}
// FILEMISSING: error: melt-assign-precision: {{.*}}missing.json: No such file or directory
// OPBAD: error: melt-assign-precision: unknown op kind 'attention' in bf16-ops (kinds: linear, moe_experts)

// -----
// A BF16 weight under an FP8 GEMM: stored as FP8 blocks, the activations
// quantized in front of the GEMM; the norm computes in FP32.
// SMALL: melt.weight @up : tensor<16x32xbf16> {{.+}} {melt.storage = f8E4M3FN}
// SMALL-LABEL: func.func @bf16_weight
// SMALL: melt.rms_norm {{.+}}precision = #melt.precision<compute = f32, accumulate = f32, output = bf16>
// SMALL: %[[Q:.+]], %[[S:.+]] = melt.quantize
// SMALL: %[[X:.+]] = melt.dequantize %[[Q]], %[[S]]
// SMALL: melt.linear %[[X]], @up {precision = #melt.precision<compute = f8E4M3FN
// SMALLBF16-LABEL: func.func @bf16_weight
// SMALLBF16-NOT: melt.quantize
// SMALLBF16: melt.linear %{{.+}}, @up {precision = #melt.precision<compute = bf16
melt.weight @norm : tensor<32xbf16> from [#melt.tensor<"norm.weight">]
melt.weight @up : tensor<16x32xbf16> from [#melt.tensor<"up.weight">]
func.func @bf16_weight(%h: tensor<?x32xbf16>) -> tensor<?x16xbf16> {
  %n = melt.rms_norm %h, @norm {epsilon = 1.0e-06 : f64} : tensor<?x32xbf16> -> tensor<?x32xbf16>
  %u = melt.linear %n, @up : tensor<?x32xbf16> -> tensor<?x16xbf16>
  return %u : tensor<?x16xbf16>
}

// -----
// An FP8 weight with its scales stays as it is (no melt.storage).
// SMALL-LABEL: melt.weight @proj : tensor<200x300xf8E4M3FN>
// SMALL-NOT: melt.storage
// SMALL: func.func @fp8_weight
// SMALL: melt.linear {{.+}}, @proj {precision = #melt.precision<compute = f8E4M3FN
melt.weight @proj : tensor<200x300xf8E4M3FN> from [#melt.tensor<"proj.weight">] scales tensor<2x3xf32> block [128, 128] from [#melt.tensor<"proj.weight_scale_inv">]
func.func @fp8_weight(%x: tensor<?x300xbf16>) -> tensor<?x200xbf16> {
  %y = melt.linear %x, @proj : tensor<?x300xbf16> -> tensor<?x200xbf16>
  return %y : tensor<?x200xbf16>
}
