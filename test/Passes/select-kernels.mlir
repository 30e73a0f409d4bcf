// melt-select-kernels (target=cuda): device formats, kernel choices and the
// device-memory check. BF16 policy on the tiny model: GEMM operands bf16
// (the routers' gates too: their scores computed in BF16), weights read by
// other kernels (embedding, norms, W_UK/W_UV) f32; experts
// with sizes in 32s on tensor cores; MLA split over the sequence (the tiny
// latent of 32 is not the tensor-core kernel's 512).
// RUN: melt-import --builtin=tiny | melt-opt --melt-fuse-mla '--melt-assign-precision=policy=bf16' --melt-select-kernels -o - 2>%t.report | FileCheck %s
// RUN: FileCheck %s --check-prefix=REPORT < %t.report
// DeepSeek-V3 (FP8 checkpoint, deepseek-v3 policy): 2-D FP8 projections
// and the FP8 expert stacks stay FP8 with their block scales (the experts
// on the tensor-core expert kernels), so the weights need 648 GiB; BF16
// attention at latent 512 / rope 64 / 128 heads: a prefill's MLA on tensor
// cores.
// RUN: melt-import --builtin=v3 | melt-opt --melt-fuse-mla '--melt-assign-precision=policy=deepseek-v3' '--melt-select-kernels=device-memory=700' -o - 2>%t.v3 | FileCheck %s --check-prefix=V3
// RUN: FileCheck %s --check-prefix=V3REPORT < %t.v3
// After melt-plan-memory: the device's buffer plan (KV cache and a
// prefill's activations in F32, the room left for the KV cache).
// RUN: melt-import --builtin=mini | melt-opt --melt-fuse-mla '--melt-assign-precision=policy=bf16' '--melt-plan-memory=report=/dev/null' --melt-select-kernels -o /dev/null 2>&1 | FileCheck %s --check-prefix=PLAN
// mini under deepseek-v3: FP8 matrices whose K is no multiple of 512 stay
// FP8 where the device's zero-padding adds at most a quarter of a row (the
// dense down projection's 10944, the shared expert's 1408: padded to 11264
// and 1536); the tiny model's short K (64) stays F32.
// RUN: melt-import --builtin=mini | melt-opt --melt-fuse-mla '--melt-assign-precision=policy=deepseek-v3' --melt-select-kernels -o - 2>%t.mini | FileCheck %s --check-prefix=MINIFP8
// RUN: FileCheck %s --check-prefix=MINIFP8REPORT < %t.mini
// RUN: melt-import --builtin=tiny | melt-opt --melt-fuse-mla '--melt-assign-precision=policy=deepseek-v3' --melt-select-kernels -o - 2>/dev/null | FileCheck %s --check-prefix=TINYFP8
// target=cpu changes nothing.
// RUN: melt-import --builtin=tiny | melt-opt '--melt-select-kernels=target=cpu' -o - | FileCheck %s --check-prefix=CPU
// tiny-mla (tiny at latent 512, rope 64, 16 heads) in BF16: its MLA on
// tensor cores, as DeepSeek's, in every layer and the MTP layer; in F32
// split over the sequence.
// RUN: melt-import --builtin=tiny-mla | melt-opt --melt-fuse-mla '--melt-assign-precision=policy=bf16' --melt-select-kernels -o /dev/null 2>&1 | FileCheck %s --check-prefix=TINYMLA
// RUN: melt-import --builtin=tiny-mla | melt-opt --melt-fuse-mla --melt-select-kernels -o /dev/null 2>&1 | FileCheck %s --check-prefix=TINYMLAF32
// TINYMLA: mla: tensor_cores: 4 ops
// TINYMLAF32: mla: split: 4 ops

// CHECK: module attributes {{{.*}}melt.target = "cuda"
// CHECK: melt.weight @model.embed_tokens : {{.+}} {melt.device_format = "f32"}
// CHECK: melt.weight @model.layers.0.input_layernorm : {{.+}} {melt.device_format = "f32"}
// CHECK: melt.weight @model.layers.0.self_attn.qkv_a_proj : tensor<104x128xbf16> {{.+}} {melt.device_format = "bf16"}
// CHECK: melt.weight @model.layers.0.self_attn.w_uk : {{.+}} {melt.device_format = "f32"}
// CHECK: melt.weight @model.layers.1.mlp.gate : tensor<8x128xbf16> {{.+}} {melt.device_format = "bf16"}
// CHECK: melt.weight @model.layers.1.mlp.experts.gate_proj : tensor<8x64x128xbf16> {{.+}} {melt.device_format = "bf16"}
// CHECK: melt.linear {{.+}} @model.layers.0.self_attn.qkv_a_proj {{.*}}melt.small_m_rows = 8
// CHECK: melt.mla {{.+}}melt.mla_kernel = "split"
// CHECK: melt.moe_experts {{.+}}melt.experts_kernel = "tensor_cores"
// CHECK: melt.logits {{.+}}melt.small_m_rows = 8

// REPORT: melt kernel selection (target cuda)
// REPORT-NEXT: weights on the device: 2.55 MiB of 139.80 GiB
// REPORT-NEXT: fp8_blocks 0 weights, 0.00 B
// REPORT-NEXT: bf16 39 weights, 1.98 MiB
// REPORT-NEXT: f32 33 weights, 583.59 KiB
// REPORT: moe_experts: tensor_cores: 3 ops
// REPORT: KV cache (F32):

// V3: melt.weight @model.layers.3.self_attn.qkv_a_proj : tensor<2112x7168xf8E4M3FN> {{.+}} {melt.device_format = "fp8_blocks"}
// V3: melt.weight @model.layers.3.mlp.gate : tensor<256x7168xbf16> {{.+}} {melt.device_format = "bf16"}
// V3: melt.weight @model.layers.3.mlp.experts.gate_proj : tensor<256x2048x7168xf8E4M3FN> {{.+}} {melt.device_format = "fp8_blocks"}
// V3: melt.linear {{.+}} @model.layers.3.self_attn.qkv_a_proj {{.*}}melt.small_m_rows = 8
// V3: melt.mla {{.+}}melt.mla_kernel = "tensor_cores"
// The output head (129280 x 7168 BF16, 1.85 GB) streams one row only.
// V3: melt.logits {{.+}}melt.small_m_rows = 1
// V3: melt.moe_experts {{.+}}melt.experts_kernel = "tensor_cores"

// V3REPORT: weights on the device: 647.65 GiB of 700.00 GiB
// V3REPORT-NEXT: fp8_blocks 549 weights, 633.02 GiB

// mini in BF16: 9.2 GiB of weights; 8 latent caches of 576 values, BF16
// (their MLA on tensor cores); the tiny model's (latent 32) stay F32.
// PLAN: weights on the device: 9.20 GiB of 139.80 GiB
// PLAN: KV cache (BF16): 9.00 KiB per token over 8 layers
// PLAN-NEXT: activations (F32): 1.09 MiB per token; 8192 tokens: 8.70 GiB
// PLAN-NEXT: room for 14202937 tokens of KV cache (3467 contexts of 4096)

// CPU-NOT: melt.device_format
// CPU-NOT: melt.target

// MINIFP8: melt.weight @model.layers.0.mlp.down_proj : tensor<2048x10944xbf16> {{.+}} {melt.device_format = "fp8_blocks", melt.storage = f8E4M3FN}
// MINIFP8: melt.weight @model.layers.1.mlp.shared_experts.down_proj : tensor<2048x1408xbf16> {{.+}} {melt.device_format = "fp8_blocks", melt.storage = f8E4M3FN}
// (The padding adds 2.4 MiB.)
// MINIFP8REPORT: fp8_blocks 69 weights, 3.83 GiB

// TINYFP8: melt.weight @model.layers.1.self_attn.q_b_proj : tensor<96x64xbf16> {{.+}} {melt.device_format = "f32", melt.storage = f8E4M3FN}
