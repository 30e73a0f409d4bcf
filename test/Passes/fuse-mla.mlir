// melt-fuse-mla: attention on a latent cache with W_UK/W_UV absorbed.
// RUN: melt-import --builtin=tiny | melt-opt --melt-fuse-mla | FileCheck %s --check-prefix=TINY --implicit-check-not=melt.attention --implicit-check-not=kv_cache --implicit-check-not=@model.layers.0.self_attn.kv_b_proj
// RUN: melt-import --builtin=v3 | melt-opt --melt-fuse-mla --melt-assign-precision --melt-model-report -o /dev/null 2>&1 | FileCheck %s --check-prefix=V3
// RUN: melt-import --builtin=v3 | melt-opt --melt-fuse-mla | FileCheck %s --check-prefix=V3IR
// RUN: melt-import --builtin=tiny | melt-opt '--melt-fuse-mla=prefill=absorbed' | FileCheck %s --check-prefix=ABSORBED
// RUN: melt-import --builtin=tiny | melt-opt '--melt-fuse-mla=prefill=decompressed' | FileCheck %s --check-prefix=DECOMPRESSED
// RUN: melt-import --builtin=tiny | melt-opt '--melt-fuse-mla=prefill-threshold=64' | FileCheck %s --check-prefix=FIXED
// RUN: melt-import --builtin=tiny | melt-opt '--melt-fuse-mla=fuse-down-projections=false' | FileCheck %s --check-prefix=SEPARATE
// RUN: rm -rf %t.fp8 && melt-import --synthesize=tiny --dtype=fp8 -o %t.fp8 2>/dev/null && melt-import %t.fp8 | melt-opt --melt-fuse-mla | FileCheck %s --check-prefix=UNALIGNED --implicit-check-not=qkv_a_proj
// RUN: melt-opt %s --split-input-file --melt-fuse-mla --verify-diagnostics

// The tiny model: kv_b_proj [4 * (16 + 16), 32] becomes two views; the
// cache keeps 32 + 8 = 40 values per token instead of 4 * (24 + 16) = 160;
// prefills above (16 + 16) * 32 / (2 * 32 + 8 - 40) = 32 tokens decompress.
// The q and kv down-projections read the same input: one GEMM.
// TINY: melt.weight @model.layers.0.self_attn.qkv_a_proj : tensor<104x128xbf16> from [#melt.tensor<"model.layers.0.self_attn.q_a_proj.weight">, #melt.tensor<"model.layers.0.self_attn.kv_a_proj_with_mqa.weight">] concat [64, 40]
// TINY: melt.weight @model.layers.0.self_attn.w_uk : tensor<4x16x32xbf16> from [#melt.tensor<"model.layers.0.self_attn.kv_b_proj.weight">] view <source = [128, 32], shape = [4, 32, 32], axis = 1, offset = 0>
// TINY: melt.weight @model.layers.0.self_attn.w_uv : tensor<4x16x32xbf16> from [#melt.tensor<"model.layers.0.self_attn.kv_b_proj.weight">] view <source = [128, 32], shape = [4, 32, 32], axis = 1, offset = 16>
// TINY-LABEL: func.func @forward
// TINY-SAME: %[[C0:[a-z0-9]+]]: !melt.latent_cache<latent = 32, rope = 8, f32>
// TINY-SAME: -> (tensor<?x512xf32>, tensor<?x128xbf16>, !melt.latent_cache<latent = 32, rope = 8, f32>
// TINY: %[[QKV:.+]] = melt.linear %{{.+}}, @model.layers.0.self_attn.qkv_a_proj : tensor<?x128xbf16> -> tensor<?x104xbf16>
// TINY: %[[PARTS:.+]]:2 = melt.split %[[QKV]] {axis = 1 : i64} : tensor<?x104xbf16> -> tensor<?x64xbf16>, tensor<?x40xbf16>
// TINY: melt.rms_norm %[[PARTS]]#0, @model.layers.0.self_attn.q_a_layernorm
// TINY: %[[KV:.+]]:2 = melt.split %[[PARTS]]#1 {axis = 1 : i64} : tensor<?x40xbf16> -> tensor<?x32xbf16>, tensor<?x8xbf16>
// TINY: %[[LAT:.+]] = melt.rms_norm %[[KV]]#0, @model.layers.0.self_attn.kv_a_layernorm
// TINY: %[[KR:.+]] = melt.rope %[[KV]]#1
// TINY: %[[C1:.+]] = melt.latent_cache_append %[[C0]], %[[LAT]], %[[KR]] at
// TINY: melt.mla %{{.+}}, %{{.+}}, %[[C1]] at %{{.+}} absorb(@model.layers.0.self_attn.w_uk, @model.layers.0.self_attn.w_uv) {prefill_threshold = 32 : i64, scale = 0.26464225796422675 : f64}
// TINY: return %{{.+}}, %{{.+}}, %[[C1]],
// TINY-LABEL: func.func @mtp_0
// TINY: melt.mla

// DeepSeek-V3: 512 + 64 = 576 values per token per layer, 1152 bytes in
// bf16 (the cache's type once melt-assign-precision gives it the attention's).
// V3: kv cache: latent, 62 layers, 576 values (1152 bytes) per token per layer, 71424 bytes per token
// The FP8 views keep kv_b_proj's scales; the cost model decompresses
// prefills above ceil(256 * 512 / (2 * 512 + 64 - 320)) = 171 tokens.
// V3IR: melt.weight @model.layers.0.self_attn.qkv_a_proj : tensor<2112x7168xf8E4M3FN> {{.+}} concat [1536, 576] scales tensor<17x56xf32> block [128, 128]
// V3IR: melt.weight @model.layers.0.self_attn.w_uk : tensor<128x128x512xf8E4M3FN> {{.+}} view <source = [32768, 512], shape = [128, 256, 512], axis = 1, offset = 0> scales tensor<256x4xf32> block [128, 128]
// V3IR: melt.mla {{.+}} {prefill_threshold = 171 : i64, scale = 0.1352

// SEPARATE: melt.linear %{{.+}}, @model.layers.0.self_attn.q_a_proj
// SEPARATE: melt.linear %{{.+}}, @model.layers.0.self_attn.kv_a_proj_with_mqa
// FP8 with q_lora_rank 64: a 128-row scale block would straddle the parts.
// UNALIGNED: melt.linear %{{.+}}, @model.layers.0.self_attn.q_a_proj
// ABSORBED: prefill_threshold = 2147483647 : i64
// DECOMPRESSED: prefill_threshold = 0 : i64
// FIXED: prefill_threshold = 64 : i64

// -----

// Attention that is not MLA (no latent, no kv_b_proj) is an error.
func.func @plain(%q: tensor<?x4x24xbf16>, %k: tensor<?x4x24xbf16>, %v: tensor<?x4x16xbf16>, %pos: tensor<?xi64>) -> tensor<?x4x16xbf16> {
  // expected-error @below {{melt-fuse-mla: this attention is not the MLA of a DeepSeek model form (K/V decompressed by kv_b_proj from a latent, cached per head)}}
  %o = melt.attention %q, %k, %v, %pos {causal, scale = 0.125 : f64} : (tensor<?x4x24xbf16>, tensor<?x4x24xbf16>, tensor<?x4x16xbf16>, tensor<?xi64>) -> tensor<?x4x16xbf16>
  return %o : tensor<?x4x16xbf16>
}
