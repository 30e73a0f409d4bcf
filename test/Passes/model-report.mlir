// melt-model-report: parameters, bytes per storage type, cache per token.
// RUN: melt-opt %s --split-input-file --melt-model-report -o /dev/null 2>&1 | FileCheck %s
// RUN: melt-opt %s --split-input-file --melt-model-report=json=true -o /dev/null 2>&1 | FileCheck %s --check-prefix=JSON
// Each split writes the file again: it holds the last report.
// RUN: melt-opt %s --split-input-file --melt-model-report=output=%t.txt -o /dev/null && FileCheck %s --input-file=%t.txt --check-prefix=FILE
// RUN: melt-import --builtin=tiny | melt-opt --melt-model-report -o /dev/null 2>&1 | FileCheck %s --check-prefix=TINY
// RUN: melt-import --builtin=v3 | melt-opt --melt-model-report -o /dev/null 2>&1 | FileCheck %s --check-prefix=V3
// FILE: kv cache: latent

// A per-head cache and an FP8 weight with its scales.
// CHECK: melt model report
// CHECK-NEXT: weights: 2 symbols, 60032 parameters
// CHECK-NEXT: weight bytes: 60064 (bf16 64, f8E4M3FN 60000), block scales 24
// JSON: "parameters": 60032
module {
  melt.weight @proj : tensor<200x300xf8E4M3FN> from [#melt.tensor<"p">]
      scales tensor<2x3xf32> block [128, 128] from [#melt.tensor<"s">]
  melt.weight @norm : tensor<32xbf16> from [#melt.tensor<"n">]
  func.func private @step(!melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>, !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>)
}
// CHECK-NEXT: kv cache: per-head K/V, 2 layers, 160 values (320 bytes) per token per layer, 640 bytes per token

// -----

// The latent cache of DeepSeek-V3: 576 values, 1152 bytes per token per layer.
// CHECK: weights: 0 symbols, 0 parameters
// CHECK: kv cache: latent, 1 layers, 576 values (1152 bytes) per token per layer, 1152 bytes per token
// JSON: "bytes_per_token_per_layer": 1152
module {
  func.func private @step(!melt.latent_cache<latent = 512, rope = 64, bf16>)
}

// TINY: weights: 72 symbols, 1188760 parameters
// TINY: kv cache: per-head K/V, 4 layers, 160 values (320 bytes) per token per layer
// DeepSeek-V3: 684.49 B parameters, FP8 blocks with their scales.
// V3: weights: 1048 symbols, 684489845504 parameters
// V3: weight bytes: 688408677376 (bf16 7837573120, f32 60416, f8E4M3FN 680571043840), block scales 166161984
// V3: kv cache: per-head K/V, 62 layers, 40960 values (81920 bytes) per token per layer
