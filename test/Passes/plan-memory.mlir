// melt-plan-memory: activation slots by liveness, KV sizing.
// RUN: melt-opt %s --split-input-file '--melt-plan-memory=max-batch=2 max-context=100 max-tokens=10' 2>%t.report | FileCheck %s
// RUN: FileCheck %s --check-prefix=REPORT < %t.report
// RUN: melt-import --builtin=v3 | melt-opt --melt-fuse-mla --melt-assign-precision '--melt-plan-memory=max-batch=8 max-context=4096' -o /dev/null 2>&1 | FileCheck %s --check-prefix=V3
// RUN: melt-import --builtin=tiny | melt-opt --melt-fuse-mla --melt-plan-memory -o /dev/null 2>&1 | FileCheck %s --check-prefix=TINY
// RUN: melt-import --builtin=tiny | melt-opt --melt-fuse-mla '--melt-assign-precision=policy=bf16' --melt-plan-memory -o /dev/null 2>&1 | FileCheck %s --check-prefix=TINYBF16

// %a (64 B/token) is dead after %b: %c reuses its slot; %b stays live
// until the add.
// CHECK: module attributes {melt.kv_cache = {bytes = 64000 : i64, bytes_per_token = 320 : i64, bytes_per_token_per_layer = 160 : i64, layers = 2 : i64, max_batch = 2 : i64, max_context = 100 : i64}}
// CHECK-LABEL: func.func @f
// CHECK-SAME: attributes {melt.memory = {bytes_per_token = 128 : i64, slots = 2 : i64, unplanned_bytes_per_token = 192 : i64, values = 3 : i64}}
// CHECK: %[[A:.+]] = melt.convert %{{.+}} {melt.slots = array<i64: 0>}
// CHECK: %[[B:.+]] = melt.add %[[A]], %[[A]] {melt.slots = array<i64: 1>}
// CHECK: melt.add %[[B]], %[[B]] {melt.slots = array<i64: 0>}

// REPORT: melt memory plan
// REPORT-NEXT: @f: 3 activations in 2 buffers; 192 -> 128 bytes per token
// REPORT-NEXT: kv cache: 2 layers, 160 bytes per token per layer, 320 bytes per token; 2 x 100 tokens

// DeepSeek-V3 with the latent cache in bf16 (the deepseek-v3 recipe): 1152
// bytes per token per layer.
// V3: kv cache: 62 layers, 1152 bytes per token per layer, 71424 bytes per token; 8 x 4096 tokens: 2232.0 MiB

module {
  func.func @f(%x: tensor<?x16xf32>, %c0: !melt.kv_cache<heads = 2, key_dim = 24, value_dim = 16, bf16>, %c1: !melt.kv_cache<heads = 2, key_dim = 24, value_dim = 16, bf16>) -> tensor<?x16xf32> {
    %a = melt.convert %x : tensor<?x16xf32> -> tensor<?x16xf32>
    %b = melt.add %a, %a : tensor<?x16xf32>
    %c = melt.add %b, %b : tensor<?x16xf32>
    return %c : tensor<?x16xf32>
  }
}

// -----
// A value used twice keeps its buffer until its last use: %a (slot 0)
// outlives %b, whose slot 1 %d takes; %e takes slot 0 once %a is dead. One
// latent cache (512 + 64 BF16 values): 1152 bytes per token.
// CHECK: module attributes {melt.kv_cache = {bytes = 230400 : i64, bytes_per_token = 1152 : i64, bytes_per_token_per_layer = 1152 : i64, layers = 1 : i64, max_batch = 2 : i64, max_context = 100 : i64}}
// CHECK-LABEL: func.func @g
// CHECK-SAME: attributes {melt.memory = {bytes_per_token = 96 : i64, slots = 3 : i64, unplanned_bytes_per_token = 144 : i64, values = 5 : i64}}
// CHECK: %[[A:.+]] = melt.convert %{{.+}} {melt.slots = array<i64: 0>}
// CHECK: %[[B:.+]] = melt.convert %{{.+}} {melt.slots = array<i64: 1>}
// CHECK: %[[C:.+]] = melt.add %[[A]], %[[B]] {melt.slots = array<i64: 2>}
// CHECK: %[[D:.+]] = melt.add %[[C]], %[[A]] {melt.slots = array<i64: 1>}
// CHECK: melt.convert %[[D]] {melt.slots = array<i64: 0>}
// REPORT: @g: 5 activations in 3 buffers; 144 -> 96 bytes per token
// REPORT-NEXT: kv cache: 1 layers, 1152 bytes per token per layer, 1152 bytes per token; 2 x 100 tokens
func.func @g(%x: tensor<?x8xbf16>, %c0: !melt.latent_cache<latent = 512, rope = 64, bf16>) -> tensor<?x8xbf16> {
  %a = melt.convert %x : tensor<?x8xbf16> -> tensor<?x8xf32>
  %b = melt.convert %x : tensor<?x8xbf16> -> tensor<?x8xf32>
  %c = melt.add %a, %b : tensor<?x8xf32>
  %d = melt.add %c, %a : tensor<?x8xf32>
  %e = melt.convert %d : tensor<?x8xf32> -> tensor<?x8xbf16>
  return %e : tensor<?x8xbf16>
}

// The tiny model's latent cache: 32 + 8 values, in F32 before
// melt-assign-precision (160 bytes), in bf16 after it (80 bytes).
// TINY: @forward: 83 activations in 6 buffers
// TINY: kv cache: 4 layers, 160 bytes per token per layer, 640 bytes per token
// TINYBF16: kv cache: 4 layers, 80 bytes per token per layer, 320 bytes per token
