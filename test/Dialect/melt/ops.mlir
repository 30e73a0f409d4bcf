// Round trip of every melt op, type and attribute, in the custom form and
// in the generic form.
// RUN: melt-opt %s | melt-opt | FileCheck %s
// RUN: melt-opt %s --mlir-print-op-generic | melt-opt | FileCheck %s

// CHECK: module attributes {melt.model = "roundtrip"}
module attributes {melt.model = "roundtrip"} {

// CHECK: melt.weight @embed : tensor<64x32xbf16> from [#melt.tensor<"model.embed_tokens.weight">]
melt.weight @embed : tensor<64x32xbf16> from [#melt.tensor<"model.embed_tokens.weight">]
// CHECK: melt.weight @norm : tensor<32xbf16> from [#melt.tensor<"model.norm.weight" in "model-00001-of-00002.safetensors">]
melt.weight @norm : tensor<32xbf16> from [#melt.tensor<"model.norm.weight" in "model-00001-of-00002.safetensors">]
// CHECK: melt.weight @proj : tensor<200x300xf8E4M3FN> from [#melt.tensor<"proj.weight">] scales tensor<2x3xf32> block [128, 128] from [#melt.tensor<"proj.weight_scale_inv">]
melt.weight @proj : tensor<200x300xf8E4M3FN> from [#melt.tensor<"proj.weight">]
    scales tensor<2x3xf32> block [128, 128] from [#melt.tensor<"proj.weight_scale_inv">]
// Two tensors concatenated along rows (fused projections).
// CHECK: melt.weight @fused : tensor<200x32xf8E4M3FN> from [#melt.tensor<"a">, #melt.tensor<"b">] concat [128, 72] scales tensor<2x1xf32> block [128, 128] from [#melt.tensor<"a_s">, #melt.tensor<"b_s">]
melt.weight @fused : tensor<200x32xf8E4M3FN> from [#melt.tensor<"a">, #melt.tensor<"b">] concat [128, 72]
    scales tensor<2x1xf32> block [128, 128] from [#melt.tensor<"a_s">, #melt.tensor<"b_s">]
melt.weight @fnuz : tensor<128x128xf8E4M3FNUZ> from [#melt.tensor<"fnuz.weight">]
    scales tensor<1x1xf32> block [128, 128] from [#melt.tensor<"fnuz.weight_scale_inv">]
melt.weight @up : tensor<16x32xbf16> from [#melt.tensor<"up.weight">]
melt.weight @head : tensor<64x32xbf16> from [#melt.tensor<"lm_head.weight">]
melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"gate.weight">]
melt.weight @gate_bias : tensor<8xf32> from [#melt.tensor<"gate.e_score_correction_bias">]
// Experts stacked from one tensor each.
// CHECK: melt.weight @experts.gate : tensor<2x16x32xbf16> from [#melt.tensor<"experts.0.gate_proj.weight">, #melt.tensor<"experts.1.gate_proj.weight">]
melt.weight @experts.gate : tensor<2x16x32xbf16> from [#melt.tensor<"experts.0.gate_proj.weight">, #melt.tensor<"experts.1.gate_proj.weight">]
melt.weight @experts.up : tensor<2x16x32xbf16> from [#melt.tensor<"experts.0.up_proj.weight">, #melt.tensor<"experts.1.up_proj.weight">]
// CHECK: melt.weight @experts.down : tensor<2x32x16xf8E4M3FN> {{.*}} scales tensor<2x1x1xf32> block [128, 128]
melt.weight @experts.down : tensor<2x32x16xf8E4M3FN> from [#melt.tensor<"experts.0.down_proj.weight">, #melt.tensor<"experts.1.down_proj.weight">]
    scales tensor<2x1x1xf32> block [128, 128] from [#melt.tensor<"experts.0.down_proj.weight_scale_inv">, #melt.tensor<"experts.1.down_proj.weight_scale_inv">]
// Views: W_UK and W_UV as slices of one kv_b_proj tensor [4 * (8 + 8), 16].
// CHECK: melt.weight @w_uk : tensor<4x8x16xbf16> from [#melt.tensor<"kv_b">] view <source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 0>
melt.weight @w_uk : tensor<4x8x16xbf16> from [#melt.tensor<"kv_b">]
    view #melt.weight_view<source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 0>
// CHECK: melt.weight @w_uv : tensor<4x8x16xf8E4M3FN> {{.*}} view <source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 8> scales tensor<1x1xf32>
melt.weight @w_uv : tensor<4x8x16xf8E4M3FN> from [#melt.tensor<"kv_b8">]
    view #melt.weight_view<source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 8>
    scales tensor<1x1xf32> block [128, 128] from [#melt.tensor<"kv_b8_scale">]
melt.weight @enorm : tensor<32xbf16> from [#melt.tensor<"enorm.weight">]
melt.weight @hnorm : tensor<32xbf16> from [#melt.tensor<"hnorm.weight">]
melt.weight @eh_proj : tensor<32x64xbf16> from [#melt.tensor<"eh_proj.weight">]

// CHECK-LABEL: func.func @blocks
func.func @blocks(%ids: tensor<?xi32>, %pos: tensor<?xi64>) -> tensor<?x64xf32> {
  // CHECK: melt.embedding %{{.*}}, @embed : tensor<?xi32> -> tensor<?x32xbf16>
  %h = melt.embedding %ids, @embed : tensor<?xi32> -> tensor<?x32xbf16>
  // CHECK: melt.rms_norm %{{.*}}, @norm {epsilon = 9.9999999999999995E-7 : f64, precision = #melt.precision<compute = f32, accumulate = f32, output = bf16>}
  %n = melt.rms_norm %h, @norm {epsilon = 1.0e-06 : f64, precision = #melt.precision<compute = f32, accumulate = f32, output = bf16>} : tensor<?x32xbf16> -> tensor<?x32xbf16>
  // CHECK: melt.linear %{{.*}}, @up {precision = #melt.precision<compute = f8E4M3FN, accumulate = f32, output = bf16, act_block = [1, 128], weight_block = [128, 128]>}
  %u = melt.linear %n, @up {precision = #melt.precision<compute = f8E4M3FN, accumulate = f32, output = bf16, act_block = [1, 128], weight_block = [128, 128]>} : tensor<?x32xbf16> -> tensor<?x16xbf16>
  // CHECK: melt.silu_mul
  %a = melt.silu_mul %u, %u : tensor<?x16xbf16>
  // CHECK: melt.add
  %s = melt.add %h, %n : tensor<?x32xbf16>
  // CHECK: melt.convert %{{.*}} : tensor<?x32xbf16> -> tensor<?x32xf32>
  %f = melt.convert %s : tensor<?x32xbf16> -> tensor<?x32xf32>
  // CHECK: melt.logits %{{.*}}, @head : tensor<?x32xf32> -> tensor<?x64xf32>
  %l = melt.logits %f, @head : tensor<?x32xf32> -> tensor<?x64xf32>
  return %l : tensor<?x64xf32>
}

// CHECK-LABEL: func.func @attention
func.func @attention(%q: tensor<?x4x24xbf16>, %k: tensor<?x4x24xbf16>, %v: tensor<?x4x16xbf16>, %pos: tensor<?xi64>,
                     %c0: !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>)
    -> (tensor<?x4x16xbf16>, !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>) {
  // CHECK: melt.rope %{{.*}}, %{{.*}} {interleaved, scaling = #melt.yarn<factor = 4.000000e+01, original_max_position = 4096, beta_fast = 3.200000e+01, beta_slow = 1.000000e+00, mscale = 7.070000e-01, mscale_all_dim = 7.070000e-01>, theta = 1.000000e+04 : f64}
  %qr = melt.rope %q, %pos {interleaved, theta = 10000.0 : f64,
      scaling = #melt.yarn<factor = 40.0, original_max_position = 4096, beta_fast = 32.0, beta_slow = 1.0, mscale = 0.707, mscale_all_dim = 0.707>}
      : tensor<?x4x24xbf16>, tensor<?xi64> -> tensor<?x4x24xbf16>
  // CHECK: melt.kv_cache_append %{{.*}}, %{{.*}}, %{{.*}} at %{{.*}} : <heads = 4, key_dim = 24, value_dim = 16, bf16>
  %c1 = melt.kv_cache_append %c0, %k, %v at %pos
      : !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>, tensor<?x4x24xbf16>, tensor<?x4x16xbf16>, tensor<?xi64>
  // CHECK: melt.kv_cache_read
  %keys, %values = melt.kv_cache_read %c1 : !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>
      -> tensor<?x4x24xbf16>, tensor<?x4x16xbf16>
  // CHECK: melt.attention %{{.*}} {causal, scale = 1.250000e-01 : f64}
  %o = melt.attention %qr, %keys, %values, %pos {causal, scale = 0.125 : f64}
      : (tensor<?x4x24xbf16>, tensor<?x4x24xbf16>, tensor<?x4x16xbf16>, tensor<?xi64>) -> tensor<?x4x16xbf16>
  return %o, %c1 : tensor<?x4x16xbf16>, !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>
}

// CHECK-LABEL: func.func @latent
func.func @latent(%qn: tensor<?x4x8xbf16>, %qr: tensor<?x4x8xbf16>, %ckv: tensor<?x16xbf16>, %kr: tensor<?x8xbf16>,
                  %pos: tensor<?xi64>, %c0: !melt.latent_cache<latent = 16, rope = 8, bf16>) -> tensor<?x4x8xbf16> {
  // CHECK: melt.latent_cache_append {{.*}} : <latent = 16, rope = 8, bf16>
  %c1 = melt.latent_cache_append %c0, %ckv, %kr at %pos
      : !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?x16xbf16>, tensor<?x8xbf16>, tensor<?xi64>
  // CHECK: melt.mla %{{.*}}, %{{.*}}, %{{.*}} at %{{.*}} absorb(@w_uk, @w_uv) {prefill_threshold = 256 : i64, scale = 1.250000e-01 : f64}
  %o = melt.mla %qn, %qr, %c1 at %pos absorb(@w_uk, @w_uv) {scale = 0.125 : f64, prefill_threshold = 256 : i64}
      : (tensor<?x4x8xbf16>, tensor<?x4x8xbf16>, !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?xi64>) -> tensor<?x4x8xbf16>
  return %o : tensor<?x4x8xbf16>
}

// CHECK-LABEL: func.func @moe
func.func @moe(%x: tensor<?x32xbf16>) -> tensor<?x32xbf16> {
  // CHECK: melt.moe_router %{{.*}}, @gate bias @gate_bias scoring sigmoid method noaux_tc {n_group = 2 : i64, norm_topk_prob = true, routed_scaling_factor = 2.500000e+00 : f64, top_k = 2 : i64, topk_group = 1 : i64}
  %idx, %w = melt.moe_router %x, @gate bias @gate_bias scoring sigmoid method noaux_tc
      {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64, norm_topk_prob = true, routed_scaling_factor = 2.5 : f64}
      : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  // CHECK: melt.moe_router %{{.*}}, @gate scoring softmax method greedy
  %idx2, %w2 = melt.moe_router %x, @gate scoring softmax method greedy
      {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64}
      : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  // CHECK: melt.moe_router %{{.*}}, @gate scoring softmax method group_limited_greedy
  %idx3, %w3 = melt.moe_router %x, @gate scoring softmax method group_limited_greedy
      {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 16.0 : f64}
      : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  // CHECK: melt.moe_experts {{.*}} gate @experts.gate up @experts.up down @experts.down {placement = #melt.expert_placement<devices = 2, slots = [0, 1, 1, 0], load = [10, 12]>}
  %y = melt.moe_experts %x, %idx, %w gate @experts.gate up @experts.up down @experts.down
      {placement = #melt.expert_placement<devices = 2, slots = [0, 1, 1, 0], load = [10, 12]>}
      : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return %y : tensor<?x32xbf16>
}

// CHECK-LABEL: func.func @shapes
func.func @shapes(%x: tensor<?x24xbf16>, %y: tensor<?x8xbf16>) -> (tensor<?x4x8xbf16>, tensor<?x32xbf16>) {
  // CHECK: melt.reshape %{{.*}} : tensor<?x24xbf16> -> tensor<?x3x8xbf16>
  %r = melt.reshape %x : tensor<?x24xbf16> -> tensor<?x3x8xbf16>
  // CHECK: melt.split %{{.*}} {axis = 1 : i64} : tensor<?x3x8xbf16> -> tensor<?x1x8xbf16>, tensor<?x2x8xbf16>
  %a, %b = melt.split %r {axis = 1 : i64} : tensor<?x3x8xbf16> -> tensor<?x1x8xbf16>, tensor<?x2x8xbf16>
  // CHECK: melt.broadcast_heads %{{.*}} : tensor<?x8xbf16> -> tensor<?x1x8xbf16>
  %yb = melt.broadcast_heads %y : tensor<?x8xbf16> -> tensor<?x1x8xbf16>
  // CHECK: melt.concat %{{.*}}, %{{.*}}, %{{.*}} {axis = 1 : i64} : tensor<?x1x8xbf16>, tensor<?x2x8xbf16>, tensor<?x1x8xbf16> -> tensor<?x4x8xbf16>
  %c = melt.concat %a, %b, %yb {axis = 1 : i64} : tensor<?x1x8xbf16>, tensor<?x2x8xbf16>, tensor<?x1x8xbf16> -> tensor<?x4x8xbf16>
  %flat = melt.concat %x, %y {axis = 1 : i64} : tensor<?x24xbf16>, tensor<?x8xbf16> -> tensor<?x32xbf16>
  return %c, %flat : tensor<?x4x8xbf16>, tensor<?x32xbf16>
}

// CHECK-LABEL: func.func @quantization
func.func @quantization(%x: tensor<?x300xbf16>) -> tensor<?x300xbf16> {
  // CHECK: melt.quantize %{{.*}} {block = array<i64: 1, 128>} : tensor<?x300xbf16> -> tensor<?x300xf8E4M3FN>, tensor<?x3xf32>
  %q, %s = melt.quantize %x {block = array<i64: 1, 128>} : tensor<?x300xbf16> -> tensor<?x300xf8E4M3FN>, tensor<?x3xf32>
  // CHECK: melt.dequantize %{{.*}}, %{{.*}} {block = array<i64: 1, 128>}
  %d = melt.dequantize %q, %s {block = array<i64: 1, 128>} : tensor<?x300xf8E4M3FN>, tensor<?x3xf32> -> tensor<?x300xbf16>
  return %d : tensor<?x300xbf16>
}

// CHECK-LABEL: func.func @mtp
func.func @mtp(%emb: tensor<?x32xbf16>, %h: tensor<?x32xbf16>) -> tensor<?x32xbf16> {
  // CHECK: melt.mtp_combine %{{.*}}, %{{.*}} enorm @enorm hnorm @hnorm eh_proj @eh_proj {epsilon = 9.9999999999999995E-7 : f64}
  %x = melt.mtp_combine %emb, %h enorm @enorm hnorm @hnorm eh_proj @eh_proj {epsilon = 1.0e-06 : f64}
      : tensor<?x32xbf16>, tensor<?x32xbf16> -> tensor<?x32xbf16>
  return %x : tensor<?x32xbf16>
}

}
