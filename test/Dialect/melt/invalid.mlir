// Every verifier message of the melt dialect, one case each.
// RUN: melt-opt %s --split-input-file --verify-diagnostics --allow-unregistered-dialect

//===----------------------------------------------------------------------===//
// Attributes and types
//===----------------------------------------------------------------------===//

// An empty tensor name.
// expected-error @below {{checkpoint tensor name must not be empty}}
melt.weight @w : tensor<4xbf16> from [#melt.tensor<"">]

// -----

// A shard path that leaves the checkpoint directory.
// expected-error @below {{shard file '../x.safetensors' must be a path inside the checkpoint directory}}
melt.weight @w : tensor<4xbf16> from [#melt.tensor<"w" in "../x.safetensors">]

// -----

// expected-error @below {{yarn factor must be >= 1, got 5.000000e-01}}
"test.op"() {s = #melt.yarn<factor = 0.5, original_max_position = 4096, beta_fast = 32.0, beta_slow = 1.0, mscale = 1.0, mscale_all_dim = 1.0>} : () -> ()

// -----

// expected-error @below {{yarn original_max_position must be positive, got 0}}
"test.op"() {s = #melt.yarn<factor = 40.0, original_max_position = 0, beta_fast = 32.0, beta_slow = 1.0, mscale = 1.0, mscale_all_dim = 1.0>} : () -> ()

// -----

// expected-error @below {{yarn needs beta_fast > beta_slow > 0, got beta_fast 1.000000e+00 and beta_slow 3.200000e+01}}
"test.op"() {s = #melt.yarn<factor = 40.0, original_max_position = 4096, beta_fast = 1.0, beta_slow = 32.0, mscale = 1.0, mscale_all_dim = 1.0>} : () -> ()

// -----

// expected-error @below {{yarn mscale and mscale_all_dim must be finite and non-negative}}
"test.op"() {s = #melt.yarn<factor = 40.0, original_max_position = 4096, beta_fast = 32.0, beta_slow = 1.0, mscale = -1.0, mscale_all_dim = 1.0>} : () -> ()

// -----

// expected-error @below {{precision compute type 'i8' is not one of f8E4M3FN, f8E4M3FNUZ, bf16, f16, f32}}
"test.op"() {p = #melt.precision<compute = i8, accumulate = f32, output = bf16>} : () -> ()

// -----

// expected-error @below {{precision cannot accumulate in 'f8E4M3FN'}}
"test.op"() {p = #melt.precision<compute = f8E4M3FN, accumulate = f8E4M3FN, output = bf16, act_block = [1, 128], weight_block = [128, 128]>} : () -> ()

// -----

// expected-error @below {{precision accumulates in 'bf16', narrower than its compute type 'f32'}}
"test.op"() {p = #melt.precision<compute = f32, accumulate = bf16, output = bf16>} : () -> ()

// -----

// expected-error @below {{act_block must have 2 sizes, got 3}}
"test.op"() {p = #melt.precision<compute = f8E4M3FN, accumulate = f32, output = bf16, act_block = [1, 1, 128], weight_block = [128, 128]>} : () -> ()

// -----

// expected-error @below {{weight_block sizes must be positive}}
"test.op"() {p = #melt.precision<compute = f8E4M3FN, accumulate = f32, output = bf16, act_block = [1, 128], weight_block = [0, 128]>} : () -> ()

// -----

// expected-error @below {{FP8 compute needs act_block and weight_block scale geometry}}
"test.op"() {p = #melt.precision<compute = f8E4M3FN, accumulate = f32, output = bf16>} : () -> ()

// -----

// expected-error @below {{expert placement needs at least one device, got 0}}
"test.op"() {p = #melt.expert_placement<devices = 0, slots = [0]>} : () -> ()

// -----

// expected-error @below {{expert placement has 3 slots, not a positive multiple of 2 devices}}
"test.op"() {p = #melt.expert_placement<devices = 2, slots = [0, 1, 2]>} : () -> ()

// -----

// expected-error @below {{expert placement slot 1 holds negative expert id -1}}
"test.op"() {p = #melt.expert_placement<devices = 1, slots = [0, -1]>} : () -> ()

// -----

// expected-error @below {{expert placement has 1 load entries for 2 devices}}
"test.op"() {p = #melt.expert_placement<devices = 2, slots = [0, 1], load = [3]>} : () -> ()

// -----

// expected-error @below {{expert placement load of device 1 must be non-negative, got -3}}
"test.op"() {p = #melt.expert_placement<devices = 2, slots = [0, 1], load = [3, -3]>} : () -> ()

// -----

// expected-error @below {{kv_cache sizes must be positive, got heads = 0, key_dim = 192, value_dim = 128}}
func.func private @f(!melt.kv_cache<heads = 0, key_dim = 192, value_dim = 128, bf16>)

// -----

// expected-error @below {{cache element type must be bf16, f16, f32 or an FP8 type, got 'i32'}}
func.func private @f(!melt.kv_cache<heads = 1, key_dim = 192, value_dim = 128, i32>)

// -----

// expected-error @below {{latent_cache needs a positive latent size and a positive even rope size, got latent = 512, rope = 63}}
func.func private @f(!melt.latent_cache<latent = 512, rope = 63, bf16>)

//===----------------------------------------------------------------------===//
// melt.weight
//===----------------------------------------------------------------------===//

// -----

// expected-error @below {{weight element type must be bf16, f16, f32 or an FP8 type, got 'i8'}}
melt.weight @w : tensor<4xi8> from [#melt.tensor<"w">]

// -----

// expected-error @below {{expects 1 weight source or one per slice of dimension 0 (4), got 2}}
melt.weight @w : tensor<4x8xbf16> from [#melt.tensor<"a">, #melt.tensor<"b">]

// -----

// expected-error @below {{FP8 weight needs block scales}}
melt.weight @w : tensor<128x128xf8E4M3FN> from [#melt.tensor<"w">]

// -----

// expected-error @below {{block scales are only valid on FP8 weights, not 'bf16'}}
melt.weight @w : tensor<128x128xbf16> from [#melt.tensor<"w">]
    scales tensor<1x1xf32> block [128, 128] from [#melt.tensor<"s">]

// -----

// expected-error @below {{block scales must be f32, got 'bf16'}}
melt.weight @w : tensor<128x128xf8E4M3FN> from [#melt.tensor<"w">]
    scales tensor<1x1xbf16> block [128, 128] from [#melt.tensor<"s">]

// -----

// expected-error @below {{block scales need a 2-D block over the last two dimensions of a weight of rank >= 2}}
melt.weight @w : tensor<128x128xf8E4M3FN> from [#melt.tensor<"w">]
    scales tensor<1x1xf32> block [128] from [#melt.tensor<"s">]

// -----

// Scales of a 300x200 weight in 128x128 blocks are 3x2 (edge blocks partial).
// expected-error @below {{scales dimension 1 must be ceil(200 / 128) = 2, got 1}}
melt.weight @w : tensor<300x200xf8E4M3FN> from [#melt.tensor<"w">]
    scales tensor<3x1xf32> block [128, 128] from [#melt.tensor<"s">]

// -----

// expected-error @below {{scales must have rank 3, got 'tensor<1x1xf32>'}}
melt.weight @w : tensor<2x128x128xf8E4M3FN> from [#melt.tensor<"a">, #melt.tensor<"b">]
    scales tensor<1x1xf32> block [128, 128] from [#melt.tensor<"s">]

// -----

// expected-error @below {{block sizes must be positive}}
melt.weight @w : tensor<128x128xf8E4M3FN> from [#melt.tensor<"w">]
    scales tensor<1x1xf32> block [0, 128] from [#melt.tensor<"s">]

// -----

// expected-error @below {{expects 1 scale source or one per slice of dimension 0 (2), got 3}}
melt.weight @w : tensor<2x128x128xf8E4M3FN> from [#melt.tensor<"a">, #melt.tensor<"b">]
    scales tensor<2x1x1xf32> block [128, 128] from [#melt.tensor<"s">, #melt.tensor<"t">, #melt.tensor<"u">]

// -----

// expected-error @+2 {{weight view reshapes 1024 elements into 1000}}
melt.weight @w : tensor<4x10x25xbf16> from [#melt.tensor<"w">]
    view #melt.weight_view<source = [64, 16], shape = [4, 10, 25], axis = 1, offset = 0>

// -----

// expected-error @+2 {{weight view axis 3 is out of range for rank 3}}
melt.weight @w : tensor<4x8x16xbf16> from [#melt.tensor<"w">]
    view #melt.weight_view<source = [64, 16], shape = [4, 16, 16], axis = 3, offset = 0>

// -----

// expected-error @+2 {{weight view offset 16 is outside dimension 1 of size 16}}
melt.weight @w : tensor<4x8x16xbf16> from [#melt.tensor<"w">]
    view #melt.weight_view<source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 16>

// -----

// expected-error @below {{weight view slice [12, +8) exceeds dimension 1 of size 16}}
melt.weight @w : tensor<4x8x16xbf16> from [#melt.tensor<"w">]
    view #melt.weight_view<source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 12>

// -----

// expected-error @below {{weight type 'tensor<4x8x8xbf16>' differs from the view shape [4, 16, 16] outside the axis}}
melt.weight @w : tensor<4x8x8xbf16> from [#melt.tensor<"w">]
    view #melt.weight_view<source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 0>

// -----

// expected-error @below {{weight type 'tensor<64x16xbf16>' does not have the rank of the view shape [4, 16, 16]}}
melt.weight @w : tensor<64x16xbf16> from [#melt.tensor<"w">]
    view #melt.weight_view<source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 0>

// -----

// expected-error @below {{a weight view reads one tensor, not 4}}
melt.weight @w : tensor<4x8x16xbf16> from [#melt.tensor<"a">, #melt.tensor<"b">, #melt.tensor<"c">, #melt.tensor<"d">]
    view #melt.weight_view<source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 0>

// -----

// expected-error @below {{a weight cannot be both a view and a concatenation}}
melt.weight @w : tensor<4x8x16xbf16> from [#melt.tensor<"w">] concat [4]
    view #melt.weight_view<source = [64, 16], shape = [4, 16, 16], axis = 1, offset = 0>

// -----

// expected-error @below {{concat needs a 2-D weight and one row count per source, got 1 for 2 sources}}
melt.weight @w : tensor<8x16xbf16> from [#melt.tensor<"a">, #melt.tensor<"b">] concat [8]

// -----

// expected-error @below {{concat row counts must be positive}}
melt.weight @w : tensor<8x16xbf16> from [#melt.tensor<"a">, #melt.tensor<"b">] concat [10, -2]

// -----

// expected-error @below {{concat parts add up to 9 rows, the weight has 8}}
melt.weight @w : tensor<8x16xbf16> from [#melt.tensor<"a">, #melt.tensor<"b">] concat [4, 5]

// -----

// expected-error @below {{concat part 0 has 64 rows, not a multiple of the 128-row scale block}}
melt.weight @w : tensor<104x128xf8E4M3FN> from [#melt.tensor<"a">, #melt.tensor<"b">] concat [64, 40]
    scales tensor<1x1xf32> block [128, 128] from [#melt.tensor<"as">, #melt.tensor<"bs">]

// -----

// expected-error @below {{concat needs one scale tensor per part}}
melt.weight @w : tensor<200x128xf8E4M3FN> from [#melt.tensor<"a">, #melt.tensor<"b">] concat [128, 72]
    scales tensor<2x1xf32> block [128, 128] from [#melt.tensor<"s">]

//===----------------------------------------------------------------------===//
// Weight users
//===----------------------------------------------------------------------===//

// -----

func.func @f(%ids: tensor<?xi32>) -> tensor<?x32xbf16> {
  // expected-error @below {{table @missing does not name a melt.weight}}
  %h = melt.embedding %ids, @missing : tensor<?xi32> -> tensor<?x32xbf16>
  return %h : tensor<?x32xbf16>
}

// -----

melt.weight @embed : tensor<64x16xbf16> from [#melt.tensor<"e">]
func.func @f(%ids: tensor<?xi32>) -> tensor<?x32xbf16> {
  // expected-error @below {{expects table @embed of shape [vocab, 32], got [64, 16]}}
  %h = melt.embedding %ids, @embed : tensor<?xi32> -> tensor<?x32xbf16>
  return %h : tensor<?x32xbf16>
}

// -----

melt.weight @embed : tensor<64x32xbf16> from [#melt.tensor<"e">]
func.func @f(%ids: tensor<3xi32>) -> tensor<4x32xbf16> {
  // expected-error @below {{result has 4 tokens but ids has 3}}
  %h = melt.embedding %ids, @embed : tensor<3xi32> -> tensor<4x32xbf16>
  return %h : tensor<4x32xbf16>
}

// -----

melt.weight @embed : tensor<64x32xbf16> from [#melt.tensor<"e">]
func.func @f(%ids: tensor<?xi32>) -> tensor<?x2x16xbf16> {
  // expected-error @below {{result must have rank 2, got 'tensor<?x2x16xbf16>'}}
  %h = melt.embedding %ids, @embed : tensor<?xi32> -> tensor<?x2x16xbf16>
  return %h : tensor<?x2x16xbf16>
}

// -----

melt.weight @norm : tensor<32xbf16> from [#melt.tensor<"n">]
func.func @f(%x: tensor<?x32xbf16>) -> tensor<?x16xbf16> {
  // expected-error @below {{result shape [?, 16] must match input shape [?, 32]}}
  %y = melt.rms_norm %x, @norm {epsilon = 1.0e-06 : f64} : tensor<?x32xbf16> -> tensor<?x16xbf16>
  return %y : tensor<?x16xbf16>
}

// -----

melt.weight @norm : tensor<32xbf16> from [#melt.tensor<"n">]
func.func @f(%x: tensor<?x?xbf16>) -> tensor<?x?xbf16> {
  // expected-error @below {{input must have a static last dimension}}
  %y = melt.rms_norm %x, @norm {epsilon = 1.0e-06 : f64} : tensor<?x?xbf16> -> tensor<?x?xbf16>
  return %y : tensor<?x?xbf16>
}

// -----

melt.weight @norm : tensor<32xbf16> from [#melt.tensor<"n">]
func.func @f(%x: tensor<?x32xbf16>) -> tensor<?x32xbf16> {
  // expected-error @below {{epsilon must be positive, got 0}}
  %y = melt.rms_norm %x, @norm {epsilon = 0.0 : f64} : tensor<?x32xbf16> -> tensor<?x32xbf16>
  return %y : tensor<?x32xbf16>
}

// -----

melt.weight @norm : tensor<16xbf16> from [#melt.tensor<"n">]
func.func @f(%x: tensor<?x32xbf16>) -> tensor<?x32xbf16> {
  // expected-error @below {{expects weight @norm of shape [32], got [16]}}
  %y = melt.rms_norm %x, @norm {epsilon = 1.0e-06 : f64} : tensor<?x32xbf16> -> tensor<?x32xbf16>
  return %y : tensor<?x32xbf16>
}

// -----

melt.weight @proj : tensor<16x32xbf16> from [#melt.tensor<"p">]
func.func @f(%x: tensor<?x32xbf16>) -> tensor<?x8x2xbf16> {
  // expected-error @below {{input and result must have the same rank, got 'tensor<?x32xbf16>' and 'tensor<?x8x2xbf16>'}}
  %y = melt.linear %x, @proj : tensor<?x32xbf16> -> tensor<?x8x2xbf16>
  return %y : tensor<?x8x2xbf16>
}

// -----

melt.weight @proj : tensor<16x32xbf16> from [#melt.tensor<"p">]
func.func @f(%x: tensor<4x32xbf16>) -> tensor<5x16xbf16> {
  // expected-error @below {{input and result differ in dimension 0}}
  %y = melt.linear %x, @proj : tensor<4x32xbf16> -> tensor<5x16xbf16>
  return %y : tensor<5x16xbf16>
}

// -----

melt.weight @proj : tensor<16x32xbf16> from [#melt.tensor<"p">]
func.func @f(%x: tensor<?x?xbf16>) -> tensor<?x16xbf16> {
  // expected-error @below {{input and result must have a static last dimension}}
  %y = melt.linear %x, @proj : tensor<?x?xbf16> -> tensor<?x16xbf16>
  return %y : tensor<?x16xbf16>
}

// -----

melt.weight @proj : tensor<32x16xbf16> from [#melt.tensor<"p">]
func.func @f(%x: tensor<?x32xbf16>) -> tensor<?x16xbf16> {
  // A [in, out] weight is the transposed layout: checkpoints store [out, in].
  // expected-error @below {{expects weight @proj of shape [16, 32], got [32, 16]}}
  %y = melt.linear %x, @proj : tensor<?x32xbf16> -> tensor<?x16xbf16>
  return %y : tensor<?x16xbf16>
}

// -----

melt.weight @head : tensor<64x16xbf16> from [#melt.tensor<"h">]
func.func @f(%x: tensor<?x32xbf16>) -> tensor<?x64xf32> {
  // expected-error @below {{expects head @head of shape [64, 32], got [64, 16]}}
  %y = melt.logits %x, @head : tensor<?x32xbf16> -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @f(%x: tensor<?x32xbf16>) -> tensor<?x64xf32> {
  // expected-error @below {{head @nothing does not name a melt.weight}}
  %y = melt.logits %x, @nothing : tensor<?x32xbf16> -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

//===----------------------------------------------------------------------===//
// RoPE and attention
//===----------------------------------------------------------------------===//

// -----

func.func @f(%x: tensor<?x2x4x8xbf16>, %p: tensor<?xi64>) -> tensor<?x2x4x8xbf16> {
  // expected-error @below {{input must be [T, D] or [T, heads, D], got 'tensor<?x2x4x8xbf16>'}}
  %y = melt.rope %x, %p {theta = 10000.0 : f64} : tensor<?x2x4x8xbf16>, tensor<?xi64> -> tensor<?x2x4x8xbf16>
  return %y : tensor<?x2x4x8xbf16>
}

// -----

func.func @f(%x: tensor<?x7xbf16>, %p: tensor<?xi64>) -> tensor<?x7xbf16> {
  // expected-error @below {{rotary dimension must be static and even, got [?, 7]}}
  %y = melt.rope %x, %p {theta = 10000.0 : f64} : tensor<?x7xbf16>, tensor<?xi64> -> tensor<?x7xbf16>
  return %y : tensor<?x7xbf16>
}

// -----

func.func @f(%x: tensor<3x8xbf16>, %p: tensor<2xi64>) -> tensor<3x8xbf16> {
  // expected-error @below {{input has 3 tokens but positions has 2}}
  %y = melt.rope %x, %p {theta = 10000.0 : f64} : tensor<3x8xbf16>, tensor<2xi64> -> tensor<3x8xbf16>
  return %y : tensor<3x8xbf16>
}

// -----

func.func @f(%x: tensor<?x8xbf16>, %p: tensor<?xi64>) -> tensor<?x8xbf16> {
  // expected-error @below {{theta must be positive, got -1}}
  %y = melt.rope %x, %p {theta = -1.0 : f64} : tensor<?x8xbf16>, tensor<?xi64> -> tensor<?x8xbf16>
  return %y : tensor<?x8xbf16>
}

// -----

func.func @f(%q: tensor<?x4x24xbf16>, %k: tensor<?x4x24xbf16>, %v: tensor<?x4x16xbf16>, %p: tensor<?xi64>) -> tensor<?x64xbf16> {
  // expected-error @below {{result must have rank 3, got 'tensor<?x64xbf16>'}}
  %o = melt.attention %q, %k, %v, %p {causal, scale = 0.125 : f64} : (tensor<?x4x24xbf16>, tensor<?x4x24xbf16>, tensor<?x4x16xbf16>, tensor<?xi64>) -> tensor<?x64xbf16>
  return %o : tensor<?x64xbf16>
}

// -----

func.func @f(%q: tensor<?x4x24xbf16>, %k: tensor<?x4x16xbf16>, %v: tensor<?x4x16xbf16>, %p: tensor<?xi64>) -> tensor<?x4x16xbf16> {
  // expected-error @below {{query width 24 differs from key width 16}}
  %o = melt.attention %q, %k, %v, %p {causal, scale = 0.125 : f64} : (tensor<?x4x24xbf16>, tensor<?x4x16xbf16>, tensor<?x4x16xbf16>, tensor<?xi64>) -> tensor<?x4x16xbf16>
  return %o : tensor<?x4x16xbf16>
}

// -----

func.func @f(%q: tensor<?x4x24xbf16>, %k: tensor<?x4x24xbf16>, %v: tensor<?x2x16xbf16>, %p: tensor<?xi64>) -> tensor<?x4x16xbf16> {
  // expected-error @below {{key [?, 4, 24] and value [?, 2, 16] must have the same length and heads}}
  %o = melt.attention %q, %k, %v, %p {causal, scale = 0.125 : f64} : (tensor<?x4x24xbf16>, tensor<?x4x24xbf16>, tensor<?x2x16xbf16>, tensor<?xi64>) -> tensor<?x4x16xbf16>
  return %o : tensor<?x4x16xbf16>
}

// -----

func.func @f(%q: tensor<?x4x24xbf16>, %k: tensor<?x3x24xbf16>, %v: tensor<?x3x16xbf16>, %p: tensor<?xi64>) -> tensor<?x4x16xbf16> {
  // expected-error @below {{query heads (4) must be a static multiple of key/value heads (3)}}
  %o = melt.attention %q, %k, %v, %p {causal, scale = 0.125 : f64} : (tensor<?x4x24xbf16>, tensor<?x3x24xbf16>, tensor<?x3x16xbf16>, tensor<?xi64>) -> tensor<?x4x16xbf16>
  return %o : tensor<?x4x16xbf16>
}

// -----

func.func @f(%q: tensor<?x4x24xbf16>, %k: tensor<?x4x24xbf16>, %v: tensor<?x4x16xbf16>, %p: tensor<?xi64>) -> tensor<?x4x24xbf16> {
  // expected-error @below {{result must be [T, 4, 16], got [?, 4, 24]}}
  %o = melt.attention %q, %k, %v, %p {causal, scale = 0.125 : f64} : (tensor<?x4x24xbf16>, tensor<?x4x24xbf16>, tensor<?x4x16xbf16>, tensor<?xi64>) -> tensor<?x4x24xbf16>
  return %o : tensor<?x4x24xbf16>
}

// -----

func.func @f(%q: tensor<?x4x24xbf16>, %k: tensor<?x4x24xbf16>, %v: tensor<?x4x16xbf16>, %p: tensor<?xi64>) -> tensor<?x4x16xbf16> {
  // expected-error @below {{scale must be positive, got 0}}
  %o = melt.attention %q, %k, %v, %p {causal, scale = 0.0 : f64} : (tensor<?x4x24xbf16>, tensor<?x4x24xbf16>, tensor<?x4x16xbf16>, tensor<?xi64>) -> tensor<?x4x16xbf16>
  return %o : tensor<?x4x16xbf16>
}

//===----------------------------------------------------------------------===//
// Caches and MLA
//===----------------------------------------------------------------------===//

// -----

func.func @f(%c: !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>, %k: tensor<?x4x16xbf16>, %v: tensor<?x4x16xbf16>, %p: tensor<?xi64>) {
  // expected-error @below {{key must be [T, 4, 24] to match the cache, got [?, 4, 16]}}
  %c1 = melt.kv_cache_append %c, %k, %v at %p : !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>, tensor<?x4x16xbf16>, tensor<?x4x16xbf16>, tensor<?xi64>
  return
}

// -----

func.func @f(%c: !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>, %k: tensor<3x4x24xbf16>, %v: tensor<2x4x16xbf16>, %p: tensor<?xi64>) {
  // expected-error @below {{key has 3 tokens but value has 2}}
  %c1 = melt.kv_cache_append %c, %k, %v at %p : !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>, tensor<3x4x24xbf16>, tensor<2x4x16xbf16>, tensor<?xi64>
  return
}

// -----

func.func @f(%c: !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>, %k: tensor<?x96xbf16>, %v: tensor<?x4x16xbf16>, %p: tensor<?xi64>) {
  // expected-error @below {{key must have rank 3, got 'tensor<?x96xbf16>'}}
  %c1 = melt.kv_cache_append %c, %k, %v at %p : !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>, tensor<?x96xbf16>, tensor<?x4x16xbf16>, tensor<?xi64>
  return
}

// -----

func.func @f(%c: !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16>) {
  // expected-error @below {{values must be [T, 4, 16] to match the cache, got [?, 2, 16]}}
  %k, %v = melt.kv_cache_read %c : !melt.kv_cache<heads = 4, key_dim = 24, value_dim = 16, bf16> -> tensor<?x4x24xbf16>, tensor<?x2x16xbf16>
  return
}

// -----

func.func @f(%c: !melt.latent_cache<latent = 16, rope = 8, bf16>, %l: tensor<?x12xbf16>, %r: tensor<?x8xbf16>, %p: tensor<?xi64>) {
  // expected-error @below {{latent dimension 1 must be 16, got [12]}}
  %c1 = melt.latent_cache_append %c, %l, %r at %p : !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?x12xbf16>, tensor<?x8xbf16>, tensor<?xi64>
  return
}

// -----

func.func @f(%c: !melt.latent_cache<latent = 16, rope = 8, bf16>, %l: tensor<3x16xbf16>, %r: tensor<3x8xbf16>, %p: tensor<5xi64>) {
  // expected-error @below {{latent has 3 tokens but positions has 5}}
  %c1 = melt.latent_cache_append %c, %l, %r at %p : !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<3x16xbf16>, tensor<3x8xbf16>, tensor<5xi64>
  return
}

// -----

melt.weight @w_uk : tensor<4x8x16xbf16> from [#melt.tensor<"uk">]
melt.weight @w_uv : tensor<4x8x16xbf16> from [#melt.tensor<"uv">]
func.func @f(%qn: tensor<?x4x8xbf16>, %qr: tensor<?x2x8xbf16>, %c: !melt.latent_cache<latent = 16, rope = 8, bf16>, %p: tensor<?xi64>) {
  // expected-error @below {{query_nope, query_rope and result must have the same static number of heads}}
  %o = melt.mla %qn, %qr, %c at %p absorb(@w_uk, @w_uv) {scale = 0.125 : f64} : (tensor<?x4x8xbf16>, tensor<?x2x8xbf16>, !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?xi64>) -> tensor<?x4x8xbf16>
  return
}

// -----

melt.weight @w_uk : tensor<4x8x16xbf16> from [#melt.tensor<"uk">]
melt.weight @w_uv : tensor<4x8x16xbf16> from [#melt.tensor<"uv">]
func.func @f(%qn: tensor<?x4x8xbf16>, %qr: tensor<?x4x4xbf16>, %c: !melt.latent_cache<latent = 16, rope = 8, bf16>, %p: tensor<?xi64>) {
  // expected-error @below {{query_rope dimension 2 must be 8, got [4]}}
  %o = melt.mla %qn, %qr, %c at %p absorb(@w_uk, @w_uv) {scale = 0.125 : f64} : (tensor<?x4x8xbf16>, tensor<?x4x4xbf16>, !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?xi64>) -> tensor<?x4x8xbf16>
  return
}

// -----

melt.weight @w_uk : tensor<4x8x16xbf16> from [#melt.tensor<"uk">]
melt.weight @w_uv : tensor<4x8x16xbf16> from [#melt.tensor<"uv">]
func.func @f(%qn: tensor<?x4x?xbf16>, %qr: tensor<?x4x8xbf16>, %c: !melt.latent_cache<latent = 16, rope = 8, bf16>, %p: tensor<?xi64>) {
  // expected-error @below {{query_nope and result must have static widths}}
  %o = melt.mla %qn, %qr, %c at %p absorb(@w_uk, @w_uv) {scale = 0.125 : f64} : (tensor<?x4x?xbf16>, tensor<?x4x8xbf16>, !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?xi64>) -> tensor<?x4x8xbf16>
  return
}

// -----

melt.weight @w_uk : tensor<4x8x16xbf16> from [#melt.tensor<"uk">]
melt.weight @w_uv : tensor<4x8x16xbf16> from [#melt.tensor<"uv">]
func.func @f(%qn: tensor<?x4x8xbf16>, %qr: tensor<?x4x8xbf16>, %c: !melt.latent_cache<latent = 16, rope = 8, bf16>, %p: tensor<?xi64>) {
  // expected-error @below {{prefill_threshold must be non-negative, got -1}}
  %o = melt.mla %qn, %qr, %c at %p absorb(@w_uk, @w_uv) {scale = 0.125 : f64, prefill_threshold = -1 : i64} : (tensor<?x4x8xbf16>, tensor<?x4x8xbf16>, !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?xi64>) -> tensor<?x4x8xbf16>
  return
}

// -----

melt.weight @w_uk : tensor<4x8x32xbf16> from [#melt.tensor<"uk">]
melt.weight @w_uv : tensor<4x8x16xbf16> from [#melt.tensor<"uv">]
func.func @f(%qn: tensor<?x4x8xbf16>, %qr: tensor<?x4x8xbf16>, %c: !melt.latent_cache<latent = 16, rope = 8, bf16>, %p: tensor<?xi64>) {
  // expected-error @below {{expects w_uk @w_uk of shape [4, 8, 16], got [4, 8, 32]}}
  %o = melt.mla %qn, %qr, %c at %p absorb(@w_uk, @w_uv) {scale = 0.125 : f64} : (tensor<?x4x8xbf16>, tensor<?x4x8xbf16>, !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?xi64>) -> tensor<?x4x8xbf16>
  return
}

// -----

melt.weight @w_uk : tensor<4x8x16xbf16> from [#melt.tensor<"uk">]
melt.weight @w_uv : tensor<4x4x16xbf16> from [#melt.tensor<"uv">]
func.func @f(%qn: tensor<?x4x8xbf16>, %qr: tensor<?x4x8xbf16>, %c: !melt.latent_cache<latent = 16, rope = 8, bf16>, %p: tensor<?xi64>) {
  // expected-error @below {{expects w_uv @w_uv of shape [4, 8, 16], got [4, 4, 16]}}
  %o = melt.mla %qn, %qr, %c at %p absorb(@w_uk, @w_uv) {scale = 0.125 : f64} : (tensor<?x4x8xbf16>, tensor<?x4x8xbf16>, !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?xi64>) -> tensor<?x4x8xbf16>
  return
}

//===----------------------------------------------------------------------===//
// MoE
//===----------------------------------------------------------------------===//

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{top_k must be at least 1, got 0}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method greedy {top_k = 0 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x0xi32>, tensor<?x0xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{n_group must be at least 1, got 0}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method greedy {top_k = 2 : i64, n_group = 0 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{topk_group (3) must be between 1 and n_group (2)}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method group_limited_greedy {top_k = 2 : i64, n_group = 2 : i64, topk_group = 3 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{routed_scaling_factor must be positive, got 0}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 0.0 : f64} : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{noaux_tc routing needs a score-correction bias}}
  %i, %w = melt.moe_router %x, @gate scoring sigmoid method noaux_tc {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64, norm_topk_prob = true, routed_scaling_factor = 2.5 : f64} : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
melt.weight @bias : tensor<8xf32> from [#melt.tensor<"b">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{a score-correction bias is only used by noaux_tc routing}}
  %i, %w = melt.moe_router %x, @gate bias @bias scoring softmax method greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{results must be [T, 2], got [?, 3]}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x3xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32x1xbf16>) {
  // expected-error @below {{input must have rank 2, got 'tensor<?x32x1xbf16>'}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32x1xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @gate : tensor<8x16xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{expects gate @gate of shape [experts, 32], got [8, 16]}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{top_k (9) exceeds the number of experts (8)}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method greedy {top_k = 9 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x9xi32>, tensor<?x9xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{n_group (3) does not divide the number of experts (8)}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method group_limited_greedy {top_k = 2 : i64, n_group = 3 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{top_k (3) exceeds the 2 experts of the 1 kept groups}}
  %i, %w = melt.moe_router %x, @gate scoring softmax method group_limited_greedy {top_k = 3 : i64, n_group = 4 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x3xi32>, tensor<?x3xf32>
  return
}

// -----

melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"g">]
melt.weight @bias : tensor<4xf32> from [#melt.tensor<"b">]
func.func @f(%x: tensor<?x32xbf16>) {
  // expected-error @below {{expects bias @bias of shape [8], got [4]}}
  %i, %w = melt.moe_router %x, @gate bias @bias scoring sigmoid method noaux_tc {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64, norm_topk_prob = true, routed_scaling_factor = 2.5 : f64} : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{result type 'tensor<?x32xf32>' must match input type 'tensor<?x32xbf16>'}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xf32>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x3xf32>) {
  // expected-error @below {{indices [?, 2] and weights [?, 3] must have the same shape}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x3xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<5x32xbf16>, %i: tensor<4x2xi32>, %w: tensor<4x2xf32>) {
  // expected-error @below {{input has 5 tokens but indices has 4}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d : (tensor<5x32xbf16>, tensor<4x2xi32>, tensor<4x2xf32>) -> tensor<5x32xbf16>
  return
}

// -----

melt.weight @g : tensor<16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{expects gate @g of shape [experts, inter, 32], got [16, 32]}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x16x32xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{expects down @d of shape [4, 32, 16], got [4, 16, 32]}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x5xi32>, %w: tensor<?x5xf32>) {
  // expected-error @below {{selects 5 experts per token of 4}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d : (tensor<?x32xbf16>, tensor<?x5xi32>, tensor<?x5xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{expert placement slot 3 holds expert 4 of 4}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d {placement = #melt.expert_placement<devices = 2, slots = [0, 1, 2, 4]>} : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{expert placement places no replica of expert 3}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d {placement = #melt.expert_placement<devices = 2, slots = [0, 1, 2, 2]>} : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{dispatch and combine types need experts placed on several devices}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d {combine = bf16} : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{dispatch and combine types need experts placed on several devices}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d {dispatch = bf16, placement = #melt.expert_placement<devices = 1, slots = [0, 1, 2, 3]>} : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{dispatch type must be f8E4M3FN, bf16 or f32, got 'f16'}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d {dispatch = f16, placement = #melt.expert_placement<devices = 2, slots = [0, 1, 2, 3]>} : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{FP8 dispatch needs experts that compute in FP8}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d {dispatch = f8E4M3FN, placement = #melt.expert_placement<devices = 2, slots = [0, 1, 2, 3]>} : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @g : tensor<4x16x32xbf16> from [#melt.tensor<"g">]
melt.weight @u : tensor<4x16x32xbf16> from [#melt.tensor<"u">]
melt.weight @d : tensor<4x32x16xbf16> from [#melt.tensor<"d">]
func.func @f(%x: tensor<?x32xbf16>, %i: tensor<?x2xi32>, %w: tensor<?x2xf32>) {
  // expected-error @below {{combine type must be bf16 or f32, got 'f8E4M3FN'}}
  %y = melt.moe_experts %x, %i, %w gate @g up @u down @d {combine = f8E4M3FN, placement = #melt.expert_placement<devices = 2, slots = [0, 1, 2, 3]>} : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return
}

//===----------------------------------------------------------------------===//
// Shape ops
//===----------------------------------------------------------------------===//

// -----

func.func @f(%a: tensor<?x8xbf16>) {
  // expected-error @below {{axis 2 is out of range for rank 2}}
  %c = melt.concat %a, %a {axis = 2 : i64} : tensor<?x8xbf16>, tensor<?x8xbf16> -> tensor<?x16xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x8xbf16>, %b: tensor<?x8xf32>) {
  // expected-error @below {{differ in rank or element type}}
  %c = melt.concat %a, %b {axis = 1 : i64} : tensor<?x8xbf16>, tensor<?x8xf32> -> tensor<?x16xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x2x8xbf16>, %b: tensor<?x3x8xbf16>) {
  // expected-error @below {{differ in dimension 1 outside the axis}}
  %c = melt.concat %a, %b {axis = 2 : i64} : tensor<?x2x8xbf16>, tensor<?x3x8xbf16> -> tensor<?x2x16xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x8xbf16>) {
  // expected-error @below {{parts add up to 16 along axis 1, the whole has 12}}
  %c = melt.concat %a, %a {axis = 1 : i64} : tensor<?x8xbf16>, tensor<?x8xbf16> -> tensor<?x12xbf16>
  return
}

// -----

func.func @f() {
  // expected-error @below {{needs at least one part}}
  %c = "melt.concat"() {axis = 0 : i64} : () -> tensor<4xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x40xbf16>) {
  // expected-error @below {{parts add up to 38 along axis 1, the whole has 40}}
  %x, %y = melt.split %a {axis = 1 : i64} : tensor<?x40xbf16> -> tensor<?x32xbf16>, tensor<?x6xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x8xbf16>) {
  // expected-error @below {{must turn [T, D] into [T, heads, D] of the same element type, got 'tensor<?x8xbf16>' -> 'tensor<?x4x4xbf16>'}}
  %b = melt.broadcast_heads %a : tensor<?x8xbf16> -> tensor<?x4x4xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x8xbf16>) {
  // expected-error @below {{cannot change the element type}}
  %b = melt.reshape %a : tensor<?x8xbf16> -> tensor<?x2x4xf32>
  return
}

// -----

func.func @f(%a: tensor<4x8xbf16>) {
  // expected-error @below {{must keep the token dimension}}
  %b = melt.reshape %a : tensor<4x8xbf16> -> tensor<8x4xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x?xbf16>) {
  // expected-error @below {{trailing dimensions must be static}}
  %b = melt.reshape %a : tensor<?x?xbf16> -> tensor<?x2x4xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x8xbf16>) {
  // expected-error @below {{regroups 8 values per token into 12}}
  %b = melt.reshape %a : tensor<?x8xbf16> -> tensor<?x3x4xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x8xbf16>) {
  // expected-error @below {{result shape [?, 4] must match input shape [?, 8]}}
  %b = melt.convert %a : tensor<?x8xbf16> -> tensor<?x4xf32>
  return
}

//===----------------------------------------------------------------------===//
// Quantization
//===----------------------------------------------------------------------===//

// -----

func.func @f(%x: tensor<?x256xbf16>) {
  // expected-error @below {{output shape [?, 128] must match input shape [?, 256]}}
  %q, %s = melt.quantize %x {block = array<i64: 1, 128>} : tensor<?x256xbf16> -> tensor<?x128xf8E4M3FN>, tensor<?x2xf32>
  return
}

// -----

func.func @f(%x: tensor<?x256xbf16>) {
  // expected-error @below {{block has 1 sizes for a tensor of rank 2}}
  %q, %s = melt.quantize %x {block = array<i64: 128>} : tensor<?x256xbf16> -> tensor<?x256xf8E4M3FN>, tensor<?x2xf32>
  return
}

// -----

func.func @f(%x: tensor<?x256xbf16>) {
  // expected-error @below {{scales dimension 1 must be ceil(256 / 128) = 2, got 3}}
  %q, %s = melt.quantize %x {block = array<i64: 1, 128>} : tensor<?x256xbf16> -> tensor<?x256xf8E4M3FN>, tensor<?x3xf32>
  return
}

// -----

func.func @f(%q: tensor<?x256xf8E4M3FN>, %s: tensor<?x2xf32>) {
  // expected-error @below {{result shape [?, 128] must match input shape [?, 256]}}
  %x = melt.dequantize %q, %s {block = array<i64: 1, 128>} : tensor<?x256xf8E4M3FN>, tensor<?x2xf32> -> tensor<?x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<?x256xf8E4M3FN>, %s: tensor<?x2x1xf32>) {
  // expected-error @below {{scales must have rank 2, got 'tensor<?x2x1xf32>'}}
  %x = melt.dequantize %q, %s {block = array<i64: 1, 128>} : tensor<?x256xf8E4M3FN>, tensor<?x2x1xf32> -> tensor<?x256xbf16>
  return
}

//===----------------------------------------------------------------------===//
// MTP
//===----------------------------------------------------------------------===//

// -----

melt.weight @e : tensor<32xbf16> from [#melt.tensor<"e">]
melt.weight @h : tensor<32xbf16> from [#melt.tensor<"h">]
melt.weight @p : tensor<32x64xbf16> from [#melt.tensor<"p">]
func.func @f(%a: tensor<?x32xbf16>, %b: tensor<?x16xbf16>) {
  // expected-error @below {{embedded, hidden and result must have one shape, got [?, 32], [?, 16] and [?, 32]}}
  %x = melt.mtp_combine %a, %b enorm @e hnorm @h eh_proj @p {epsilon = 1.0e-06 : f64} : tensor<?x32xbf16>, tensor<?x16xbf16> -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @e : tensor<32xbf16> from [#melt.tensor<"e">]
melt.weight @h : tensor<32xbf16> from [#melt.tensor<"h">]
melt.weight @p : tensor<32x64xbf16> from [#melt.tensor<"p">]
func.func @f(%a: tensor<?x?xbf16>) {
  // expected-error @below {{hidden size must be static}}
  %x = melt.mtp_combine %a, %a enorm @e hnorm @h eh_proj @p {epsilon = 1.0e-06 : f64} : tensor<?x?xbf16>, tensor<?x?xbf16> -> tensor<?x?xbf16>
  return
}

// -----

melt.weight @e : tensor<32xbf16> from [#melt.tensor<"e">]
melt.weight @h : tensor<32xbf16> from [#melt.tensor<"h">]
melt.weight @p : tensor<32x64xbf16> from [#melt.tensor<"p">]
func.func @f(%a: tensor<?x32xbf16>) {
  // expected-error @below {{epsilon must be positive, got -1}}
  %x = melt.mtp_combine %a, %a enorm @e hnorm @h eh_proj @p {epsilon = -1.0 : f64} : tensor<?x32xbf16>, tensor<?x32xbf16> -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @e : tensor<32xbf16> from [#melt.tensor<"e">]
melt.weight @h : tensor<32xbf16> from [#melt.tensor<"h">]
melt.weight @p : tensor<32x32xbf16> from [#melt.tensor<"p">]
func.func @f(%a: tensor<?x32xbf16>) {
  // The projection reads the concatenation of both normalized inputs.
  // expected-error @below {{expects eh_proj @p of shape [32, 64], got [32, 32]}}
  %x = melt.mtp_combine %a, %a enorm @e hnorm @h eh_proj @p {epsilon = 1.0e-06 : f64} : tensor<?x32xbf16>, tensor<?x32xbf16> -> tensor<?x32xbf16>
  return
}

// -----

melt.weight @e : tensor<16xbf16> from [#melt.tensor<"e">]
melt.weight @h : tensor<32xbf16> from [#melt.tensor<"h">]
melt.weight @p : tensor<32x64xbf16> from [#melt.tensor<"p">]
func.func @f(%a: tensor<?x32xbf16>) {
  // expected-error @below {{expects enorm @e of shape [32], got [16]}}
  %x = melt.mtp_combine %a, %a enorm @e hnorm @h eh_proj @p {epsilon = 1.0e-06 : f64} : tensor<?x32xbf16>, tensor<?x32xbf16> -> tensor<?x32xbf16>
  return
}
