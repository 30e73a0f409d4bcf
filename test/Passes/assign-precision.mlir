// melt-assign-precision: the deepseek-v3 recipe, bf16, fp32, overrides.
// RUN: melt-import --builtin=tiny | melt-opt --melt-assign-precision | FileCheck %s --check-prefix=V3
// RUN: melt-import --builtin=v3 | melt-opt --melt-assign-precision | FileCheck %s --check-prefix=FP8CKPT --implicit-check-not="melt.storage = f8E4M3FN"
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=bf16=layers.0-1,lm_head,shared_experts' | FileCheck %s --check-prefix=KEEP
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=policy=bf16' | FileCheck %s --check-prefix=BF16 --implicit-check-not=melt.quantize
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=policy=fp32' | FileCheck %s --check-prefix=FP32 --implicit-check-not=melt.quantize --implicit-check-not=melt.storage
// After melt-fuse-mla: the latent caches take their attention's compute type.
// RUN: melt-import --builtin=tiny | melt-opt --melt-fuse-mla --melt-assign-precision | FileCheck %s --check-prefix=LATENT --implicit-check-not="rope = 8, f32>"
// RUN: melt-import --builtin=tiny | melt-opt --melt-fuse-mla '--melt-assign-precision=policy=fp32' | FileCheck %s --check-prefix=LATENT32 --implicit-check-not="rope = 8, bf16>"
// Small IR, before and after (the sections at the end of this file).
// RUN: melt-opt %s --split-input-file --melt-assign-precision | FileCheck %s --check-prefix=SMALL
// RUN: melt-opt %s --split-input-file '--melt-assign-precision=bf16-ops=linear' | FileCheck %s --check-prefix=SMALLBF16
// RUN: melt-opt %s --split-input-file '--melt-assign-precision=bf16-ops=moe_experts' | FileCheck %s --check-prefix=SMALLEXPERTS
// By op kind, and from a JSON policy file.
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=bf16-ops=moe_experts' | FileCheck %s --check-prefix=OPKIND
// RUN: rm -rf %t && mkdir -p %t
// RUN: echo '{"policy": "deepseek-v3", "bf16": ["lm_head", "layers.0-1"], "bf16_ops": ["moe_experts"]}' > %t/policy.json
// RUN: melt-import --builtin=tiny | melt-opt '--melt-assign-precision=policy-file=%t/policy.json' | FileCheck %s --check-prefix=FILE

// The latent caches (F32 out of melt-fuse-mla) in BF16 under the deepseek-v3
// recipe: the function's arguments and results, and each append.
// LATENT-LABEL: func.func @forward
// LATENT-SAME: %arg2: !melt.latent_cache<latent = 32, rope = 8, bf16>
// LATENT-SAME: -> ({{.+}}, !melt.latent_cache<latent = 32, rope = 8, bf16>
// LATENT: melt.latent_cache_append %arg2, {{.+}} : <latent = 32, rope = 8, bf16>
// LATENT: melt.mla {{.+}}precision = #melt.precision<compute = bf16
// The fp32 policy keeps them F32.
// LATENT32-LABEL: func.func @forward
// LATENT32-SAME: %arg2: !melt.latent_cache<latent = 32, rope = 8, f32>
// LATENT32: melt.latent_cache_append %arg2, {{.+}} : <latent = 32, rope = 8, f32>

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


// OPKIND: melt.linear %{{.+}}, @model.layers.0.self_attn.q_a_proj {precision = #melt.precision<compute = f8E4M3FN
// OPKIND: melt.moe_experts {{.+}}precision = #melt.precision<compute = bf16
// FILE: melt.linear %{{.+}}, @model.layers.0.self_attn.q_a_proj {precision = #melt.precision<compute = bf16
// FILE: melt.linear %{{.+}}, @model.layers.2.self_attn.q_a_proj {precision = #melt.precision<compute = f8E4M3FN
// FILE: melt.moe_experts {{.+}}precision = #melt.precision<compute = bf16
// FILE: melt.logits {{.+}}precision = #melt.precision<compute = bf16

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

// -----
// Experts spread over 2 devices (placed by melt-plan-experts): tokens go to
// them in FP8 (the experts' input), outputs come back in BF16. With
// bf16-ops=moe_experts both ways are BF16. One device: no exchange at all.
// SMALL-LABEL: func.func @placed_experts
// SMALL: melt.quantize
// SMALL: melt.moe_experts {{.+}} {combine = bf16, dispatch = f8E4M3FN, placement = #melt.expert_placement<devices = 2, slots = [0, 1, 2, 3]>, precision = #melt.precision<compute = f8E4M3FN
// SMALL-LABEL: func.func @one_device
// SMALL-NOT: dispatch
// SMALL: melt.moe_experts {{.+}} {placement = #melt.expert_placement<devices = 1, slots = [0, 1, 2, 3]>, precision = #melt.precision<compute = f8E4M3FN
// SMALLEXPERTS-LABEL: func.func @placed_experts
// SMALLEXPERTS-NOT: melt.quantize
// SMALLEXPERTS: melt.moe_experts {{.+}} {combine = bf16, dispatch = bf16, placement =
melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @placed_experts(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x32xbf16> {
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d {placement = #melt.expert_placement<devices = 2, slots = [0, 1, 2, 3]>} : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return %y : tensor<?x32xbf16>
}
func.func @one_device(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x32xbf16> {
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d {placement = #melt.expert_placement<devices = 1, slots = [0, 1, 2, 3]>} : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return %y : tensor<?x32xbf16>
}
