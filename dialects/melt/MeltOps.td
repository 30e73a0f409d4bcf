//===- MeltOps.td - melt operations ------------------------*- tablegen -*-===//
#ifndef MELT_DIALECT_MELTOPS_TD
#define MELT_DIALECT_MELTOPS_TD

include "dialects/melt/MeltBase.td"
include "dialects/melt/MeltAttrs.td"
include "dialects/melt/MeltTypes.td"
include "mlir/IR/SymbolInterfaces.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"

class Melt_Op<string mnemonic, list<Trait> traits = []>
    : Op<Melt_Dialect, mnemonic, traits>;

/// An op that reads weights through symbols; it verifies their shapes.
class Melt_WeightUserOp<string mnemonic, list<Trait> traits = []>
    : Melt_Op<mnemonic, !listconcat(traits,
        [Pure, DeclareOpInterfaceMethods<SymbolUserOpInterface>])>;

def Melt_ActivationElement : AnyTypeOf<[BF16, F16, F32]>;
def Melt_ActivationTensor : RankedTensorOf<[BF16, F16, F32]>;
def Melt_Fp8Tensor : RankedTensorOf<[F8E4M3FN, F8E4M3FNUZ]>;
def Melt_PositionTensor : TensorRankOf<[I32, I64], [1]>;
def Melt_TokenTensor : TensorRankOf<[I32, I64], [1]>;
def Melt_ScaleTensor : RankedTensorOf<[F32]>;
def Melt_AnyCache : AnyTypeOf<[Melt_KVCacheType, Melt_LatentCacheType]>;
def Melt_TensorSourceArrayAttr :
    TypedArrayAttrBase<Melt_TensorSourceAttr, "checkpoint tensors">;

//===----------------------------------------------------------------------===//
// Weights
//===----------------------------------------------------------------------===//

def Melt_WeightOp : Melt_Op<"weight", [Symbol, HasParent<"::mlir::ModuleOp">]> {
  let summary = "a model weight, by reference to checkpoint tensors";
  let description = [{
    Declares a weight of the model as a module-level symbol. Its type gives
    shape and storage type; `from` lists the checkpoint tensors it is made
    of: one tensor of the same shape, or one tensor per slice of dimension 0
    (experts stacked into one weight). The data stays in the checkpoint.

    FP8 weights carry block scales: `scales` is their type (f32, one scale
    per `block` of the last two dimensions, edge blocks partial, as in
    DeepSeek-V3's `weight_scale_inv`), followed by their source tensors.

    With `view`, the weight is a slice of its one source tensor reshaped
    (`#melt.weight_view`); its block scales then describe that tensor.
    With `concat`, the sources are stacked along dimension 0 with these row
    counts (one GEMM for projections that read the same input); FP8 parts
    other than the last must fill whole 128-row blocks, and each part
    brings its own scale tensor.

    ```mlir
    melt.weight @model.norm : tensor<7168xbf16>
        from [#melt.tensor<"model.norm.weight">]
    melt.weight @model.layers.0.self_attn.q_a_proj : tensor<1536x7168xf8E4M3FN>
        from [#melt.tensor<"model.layers.0.self_attn.q_a_proj.weight">]
        scales tensor<12x56xf32> block [128, 128]
        from [#melt.tensor<"model.layers.0.self_attn.q_a_proj.weight_scale_inv">]
    ```
  }];
  let arguments = (ins
    SymbolNameAttr:$sym_name,
    TypeAttrOf<AnyStaticShapeTensor>:$type,
    Melt_TensorSourceArrayAttr:$sources,
    OptionalAttr<DenseI64ArrayAttr>:$concat,
    OptionalAttr<TypeAttrOf<AnyStaticShapeTensor>>:$scale_type,
    OptionalAttr<DenseI64ArrayAttr>:$block_size,
    OptionalAttr<Melt_TensorSourceArrayAttr>:$scale_sources,
    OptionalAttr<Melt_WeightViewAttr>:$view);
  let assemblyFormat = [{
    $sym_name `:` $type `from` $sources (`concat` $concat^)? (`view` $view^)?
    (`scales` $scale_type^ `block` $block_size `from` $scale_sources)?
    attr-dict
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    ::mlir::RankedTensorType getTensorType() {
      return ::llvm::cast<::mlir::RankedTensorType>(getType());
    }
    bool hasBlockScales() { return getScaleType().has_value(); }
    /// The shape of each checkpoint tensor the weight reads, in `sources`
    /// order: the view's source, a part of a concatenation, a slice of
    /// dimension 0 when stacked, else the weight's own.
    ::llvm::SmallVector<::llvm::SmallVector<int64_t>> getSourceShapes();
    /// The same for `scale_sources`.
    ::llvm::SmallVector<::llvm::SmallVector<int64_t>> getScaleSourceShapes();
  }];
}

//===----------------------------------------------------------------------===//
// Embedding, normalization, projections
//===----------------------------------------------------------------------===//

def Melt_EmbeddingOp : Melt_WeightUserOp<"embedding"> {
  let summary = "look up token embeddings";
  let description = [{
    Gathers the rows of the `[vocab, hidden]` table `table` for `ids`.

    ```mlir
    %h = melt.embedding %ids, @model.embed_tokens
        : tensor<?xi32> -> tensor<?x7168xbf16>
    ```
  }];
  let arguments = (ins Melt_TokenTensor:$ids, FlatSymbolRefAttr:$table);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = [{
    $ids `,` $table attr-dict `:` type($ids) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Melt_RMSNormOp : Melt_WeightUserOp<"rms_norm"> {
  let summary = "RMS normalization over the last dimension";
  let description = [{
    `y = x / sqrt(mean(x^2) + epsilon) * weight`, over the last dimension;
    `weight` has that dimension's size. The result may have another float
    type than the input (FP32 math, BF16 output).

    ```mlir
    %y = melt.rms_norm %x, @model.norm {epsilon = 1.0e-06 : f64}
        : tensor<?x7168xbf16> -> tensor<?x7168xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$input, FlatSymbolRefAttr:$weight,
                       F64Attr:$epsilon,
                       OptionalAttr<Melt_PrecisionAttr>:$precision);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` type($input) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Melt_LinearOp : Melt_WeightUserOp<"linear"> {
  let summary = "y = x W^T with a [out, in] weight, plain or block-scaled FP8";
  let description = [{
    A projection without bias, as every Linear of DeepSeek-V3. The weight is
    `[out, in]` like the checkpoint; when it is FP8 its block scales are
    applied (dequantized weight = block x scale). `precision` says how the
    GEMM runs once `melt-assign-precision` has chosen.

    ```mlir
    %q = melt.linear %h, @model.layers.0.self_attn.q_a_proj
        : tensor<?x7168xbf16> -> tensor<?x1536xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$input, FlatSymbolRefAttr:$weight,
                       OptionalAttr<Melt_PrecisionAttr>:$precision);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` type($input) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Melt_LogitsOp : Melt_WeightUserOp<"logits"> {
  let summary = "the output head: vocabulary logits in FP32";
  let description = [{
    Projects final hidden states onto the vocabulary with the `[vocab,
    hidden]` head weight. Logits are always FP32 so that sampling and
    comparisons see full precision.

    ```mlir
    %logits = melt.logits %h, @lm_head
        : tensor<?x7168xbf16> -> tensor<?x129280xf32>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$input, FlatSymbolRefAttr:$head,
                       OptionalAttr<Melt_PrecisionAttr>:$precision);
  let results = (outs TensorRankOf<[F32], [2]>:$result);
  let assemblyFormat = [{
    $input `,` $head attr-dict `:` type($input) `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Position encoding and attention
//===----------------------------------------------------------------------===//

def Melt_RopeOp : Melt_Op<"rope", [Pure, AllTypesMatch<["input", "result"]>]> {
  let summary = "rotary position embedding, optionally YaRN-scaled";
  let description = [{
    Rotates pairs of the last dimension by `position * theta^(-2i/d)`.
    `interleaved` pairs elements (2i, 2i+1) — the layout of DeepSeek's
    checkpoints; otherwise element i pairs with i + d/2 (the Llama layout).
    `scaling` applies YaRN frequency interpolation. The input is `[T, D]`
    (the shared RoPE key) or `[T, heads, D]`.

    ```mlir
    %q = melt.rope %q_rope, %pos {interleaved, theta = 10000.0 : f64,
        scaling = #melt.yarn<factor = 40.0, original_max_position = 4096,
                             beta_fast = 32.0, beta_slow = 1.0, mscale = 1.0,
                             mscale_all_dim = 1.0>}
        : tensor<?x128x64xbf16>, tensor<?xi64> -> tensor<?x128x64xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$input,
                       Melt_PositionTensor:$positions, F64Attr:$theta,
                       UnitAttr:$interleaved,
                       OptionalAttr<Melt_YarnAttr>:$scaling,
                       OptionalAttr<Melt_PrecisionAttr>:$precision);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = [{
    $input `,` $positions attr-dict `:` type($input) `,` type($positions)
    `->` type($result)
  }];
  let hasVerifier = 1;
}

def Melt_AttentionOp : Melt_Op<"attention", [Pure]> {
  let summary = "scaled dot-product attention over per-head keys and values";
  let description = [{
    `query` is `[T, heads, key_dim]` for the new tokens at `positions`;
    `key`/`value` are `[S, kv_heads, key_dim]` / `[S, kv_heads, value_dim]`,
    the whole cached sequence, key `s` at position `s`. Heads share K/V in
    groups of `heads / kv_heads`. With `causal`, query at position p sees
    keys 0..p. Softmax accumulates in FP32.

    ```mlir
    %o = melt.attention %q, %k, %v, %pos {causal, scale = 0.1352 : f64}
        : (tensor<?x128x192xbf16>, tensor<?x128x192xbf16>,
           tensor<?x128x128xbf16>, tensor<?xi64>) -> tensor<?x128x128xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$query,
                       Melt_ActivationTensor:$key,
                       Melt_ActivationTensor:$value,
                       Melt_PositionTensor:$positions, F64Attr:$scale,
                       UnitAttr:$causal,
                       OptionalAttr<Melt_PrecisionAttr>:$precision);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = [{
    $query `,` $key `,` $value `,` $positions attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Melt_KVCacheAppendOp : Melt_Op<"kv_cache_append",
    [Pure, AllTypesMatch<["cache", "result"]>]> {
  let summary = "write new keys and values into a per-head cache";
  let description = [{
    Stores `key[t]` and `value[t]` at `positions[t]` and yields the updated
    cache. Key and value shapes must match the cache type.

    ```mlir
    %c1 = melt.kv_cache_append %c0, %k, %v at %pos
        : !melt.kv_cache<heads = 128, key_dim = 192, value_dim = 128, bf16>,
          tensor<?x128x192xbf16>, tensor<?x128x128xbf16>, tensor<?xi64>
    ```
  }];
  let arguments = (ins Melt_KVCacheType:$cache, Melt_ActivationTensor:$key,
                       Melt_ActivationTensor:$value,
                       Melt_PositionTensor:$positions);
  let results = (outs Melt_KVCacheType:$result);
  let assemblyFormat = [{
    $cache `,` $key `,` $value `at` $positions attr-dict `:` type($cache) `,`
    type($key) `,` type($value) `,` type($positions)
  }];
  let hasVerifier = 1;
}

def Melt_KVCacheReadOp : Melt_Op<"kv_cache_read", [Pure]> {
  let summary = "read every cached key and value of the sequence";
  let description = [{
    Returns the cached keys `[S, heads, key_dim]` and values
    `[S, heads, value_dim]`, S being the number of cached tokens.

    ```mlir
    %k, %v = melt.kv_cache_read %c1
        : !melt.kv_cache<heads = 128, key_dim = 192, value_dim = 128, bf16>
        -> tensor<?x128x192xbf16>, tensor<?x128x128xbf16>
    ```
  }];
  let arguments = (ins Melt_KVCacheType:$cache);
  let results = (outs Melt_ActivationTensor:$keys,
                      Melt_ActivationTensor:$values);
  let assemblyFormat = [{
    $cache attr-dict `:` type($cache) `->` type($keys) `,` type($values)
  }];
  let hasVerifier = 1;
}

def Melt_LatentCacheAppendOp : Melt_Op<"latent_cache_append",
    [Pure, AllTypesMatch<["cache", "result"]>]> {
  let summary = "write compressed KV and RoPE keys into a latent cache";
  let description = [{
    Stores the normalized compressed KV `latent[t]` (`[T, latent]`) and the
    rotated shared key `rope_key[t]` (`[T, rope]`) at `positions[t]`.

    ```mlir
    %c1 = melt.latent_cache_append %c0, %ckv, %kr at %pos
        : !melt.latent_cache<latent = 512, rope = 64, bf16>,
          tensor<?x512xbf16>, tensor<?x64xbf16>, tensor<?xi64>
    ```
  }];
  let arguments = (ins Melt_LatentCacheType:$cache,
                       Melt_ActivationTensor:$latent,
                       Melt_ActivationTensor:$rope_key,
                       Melt_PositionTensor:$positions);
  let results = (outs Melt_LatentCacheType:$result);
  let assemblyFormat = [{
    $cache `,` $latent `,` $rope_key `at` $positions attr-dict `:`
    type($cache) `,` type($latent) `,` type($rope_key) `,` type($positions)
  }];
  let hasVerifier = 1;
}

def Melt_MLAOp : Melt_WeightUserOp<"mla"> {
  let summary = "multi-head latent attention over a latent cache";
  let description = [{
    Attention of DeepSeek-V2/V3 on the compressed cache. For decode it runs
    absorbed: each head's `query_nope` is multiplied into the latent space by
    `w_uk` (`[heads, nope, latent]`), scores are taken against the cached
    latent vectors plus `query_rope . rope_key`, and the weighted latent sum
    is expanded by `w_uv` (`[heads, v, latent]`). For prefill longer than
    `prefill_threshold` tokens the runtime may decompress K/V instead; both
    forms compute the same function. The cache must already hold the new
    tokens (append first).

    ```mlir
    %o = melt.mla %qn, %qr, %c1 at %pos absorb(@w_uk, @w_uv)
        {scale = 0.1352 : f64, prefill_threshold = 256 : i64}
        : (tensor<?x128x128xbf16>, tensor<?x128x64xbf16>,
           !melt.latent_cache<latent = 512, rope = 64, bf16>, tensor<?xi64>)
        -> tensor<?x128x128xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$query_nope,
                       Melt_ActivationTensor:$query_rope,
                       Melt_LatentCacheType:$cache,
                       Melt_PositionTensor:$positions,
                       FlatSymbolRefAttr:$w_uk, FlatSymbolRefAttr:$w_uv,
                       F64Attr:$scale,
                       OptionalAttr<I64Attr>:$prefill_threshold,
                       OptionalAttr<Melt_PrecisionAttr>:$precision);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = [{
    $query_nope `,` $query_rope `,` $cache `at` $positions
    `absorb` `(` $w_uk `,` $w_uv `)` attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Mixture of experts
//===----------------------------------------------------------------------===//

def Melt_MoERouterOp : Melt_WeightUserOp<"moe_router"> {
  let summary = "expert selection: scores, correction bias, group-limited top-k";
  let description = [{
    Computes router logits with the `[experts, hidden]` `gate` weight and
    turns them into `top_k` expert indices and weights per token:

    - scores are `sigmoid` or `softmax` of the logits (FP32);
    - `noaux_tc` (DeepSeek-V3) adds `bias` (`e_score_correction_bias`) for
      selection only, scores each of `n_group` groups by the sum of its top-2
      biased scores, keeps `topk_group` groups and masks the others with
      -inf; `group_limited_greedy` (DeepSeek-V2) scores groups by their best
      score; `greedy` takes the top-k over all experts;
    - weights are the unbiased scores of the chosen experts, divided by their
      sum when `norm_topk_prob`, then multiplied by `routed_scaling_factor`.

    ```mlir
    %idx, %w = melt.moe_router %h, @gate bias @gate_bias
        scoring sigmoid method noaux_tc
        {top_k = 8 : i64, n_group = 8 : i64, topk_group = 4 : i64,
         norm_topk_prob = true, routed_scaling_factor = 2.5 : f64}
        : tensor<?x7168xbf16> -> tensor<?x8xi32>, tensor<?x8xf32>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$input, FlatSymbolRefAttr:$gate,
                       OptionalAttr<FlatSymbolRefAttr>:$bias,
                       Melt_ScoringFuncAttr:$scoring,
                       Melt_TopkMethodAttr:$topk_method,
                       I64Attr:$top_k, I64Attr:$n_group, I64Attr:$topk_group,
                       BoolAttr:$norm_topk_prob,
                       F64Attr:$routed_scaling_factor,
                       OptionalAttr<Melt_PrecisionAttr>:$precision);
  let results = (outs TensorRankOf<[I32], [2]>:$indices,
                      TensorRankOf<[F32], [2]>:$weights);
  let assemblyFormat = [{
    $input `,` $gate (`bias` $bias^)? `scoring` $scoring
    `method` $topk_method attr-dict `:` type($input) `->`
    type($indices) `,` type($weights)
  }];
  let hasVerifier = 1;
}

def Melt_MoEExpertsOp : Melt_WeightUserOp<"moe_experts"> {
  let summary = "routed experts: SwiGLU FFNs with stacked weights, weighted sum";
  let description = [{
    For every token and each of its `K` selected experts e (from
    `melt.moe_router`), computes `down_e(silu(gate_e x) * up_e x)` and sums
    the results weighted by `weights`. `gate` and `up` are stacked
    `[experts, inter, hidden]`, `down` is `[experts, hidden, inter]`. The
    shared experts are ordinary `melt.linear` ops beside this one.
    `placement`, set by `melt-plan-experts`, says which device holds which
    expert; it never changes the result. When the experts are spread over
    several devices, `melt-assign-precision` also chooses the types tokens
    travel in: `dispatch` (to the experts' devices; FP8 e4m3 with 1x128
    scales when the experts compute in FP8) and `combine` (expert outputs
    back to the token's device before the weighted sum; BF16 in DeepSeek-V3).
    On one device, each expert's output is rounded to the output type of
    `precision` before the weighted sum (BF16 under the `bf16` and
    `deepseek-v3` policies, as the reference's experts write it).

    ```mlir
    %y = melt.moe_experts %h, %idx, %w
        gate @experts.gate up @experts.up down @experts.down
        : (tensor<?x7168xbf16>, tensor<?x8xi32>, tensor<?x8xf32>)
        -> tensor<?x7168xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$input,
                       TensorRankOf<[I32], [2]>:$indices,
                       TensorRankOf<[F32], [2]>:$weights,
                       FlatSymbolRefAttr:$gate, FlatSymbolRefAttr:$up,
                       FlatSymbolRefAttr:$down,
                       OptionalAttr<Melt_ExpertPlacementAttr>:$placement,
                       OptionalAttr<Melt_PrecisionAttr>:$precision,
                       OptionalAttr<TypeAttr>:$dispatch,
                       OptionalAttr<TypeAttr>:$combine);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = [{
    $input `,` $indices `,` $weights `gate` $gate `up` $up `down` $down
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    ::mlir::LogicalResult
    verifyExchangeTypes(::mlir::melt::ExpertPlacementAttr placement);
  }];
}

//===----------------------------------------------------------------------===//
// Elementwise and shape ops
//===----------------------------------------------------------------------===//

def Melt_SiluMulOp : Melt_Op<"silu_mul", [Pure, SameOperandsAndResultType]> {
  let summary = "silu(gate) * up, the SwiGLU activation";
  let description = [{
    ```mlir
    %a = melt.silu_mul %g, %u : tensor<?x18432xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$gate, Melt_ActivationTensor:$up);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = "$gate `,` $up attr-dict `:` type($result)";
}

def Melt_AddOp : Melt_Op<"add", [Pure, Commutative, SameOperandsAndResultType]> {
  let summary = "elementwise sum (residual connections)";
  let description = [{
    ```mlir
    %h1 = melt.add %h0, %attn : tensor<?x7168xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$lhs, Melt_ActivationTensor:$rhs);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def Melt_BroadcastHeadsOp : Melt_Op<"broadcast_heads", [Pure]> {
  let summary = "repeat a per-token vector for every head";
  let description = [{
    Turns `[T, D]` into `[T, heads, D]` by repetition: MLA's RoPE key is
    shared by all heads.

    ```mlir
    %kr3 = melt.broadcast_heads %kr : tensor<?x64xbf16> -> tensor<?x128x64xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$input);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Melt_ConcatOp : Melt_Op<"concat", [Pure]> {
  let summary = "concatenate tensors along one axis";
  let description = [{
    All inputs have the rank and element type of the result and the same
    sizes except along `axis`, where the result's size is their sum.

    ```mlir
    %k = melt.concat %k_nope, %k_rope {axis = 2 : i64}
        : tensor<?x128x128xbf16>, tensor<?x128x64xbf16> -> tensor<?x128x192xbf16>
    ```
  }];
  let arguments = (ins Variadic<AnyRankedTensor>:$inputs, I64Attr:$axis);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = [{
    $inputs attr-dict `:` type($inputs) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Melt_SplitOp : Melt_Op<"split", [Pure]> {
  let summary = "split a tensor into consecutive slices along one axis";
  let description = [{
    The results' sizes along `axis` add up to the input's; all other sizes
    and the element type are the input's.

    ```mlir
    %ckv, %kr = melt.split %kv {axis = 1 : i64}
        : tensor<?x576xbf16> -> tensor<?x512xbf16>, tensor<?x64xbf16>
    ```
  }];
  let arguments = (ins AnyRankedTensor:$input, I64Attr:$axis);
  let results = (outs Variadic<AnyRankedTensor>:$results);
  let assemblyFormat = [{
    $input attr-dict `:` type($input) `->` type($results)
  }];
  let hasVerifier = 1;
}

def Melt_ReshapeOp : Melt_Op<"reshape", [Pure]> {
  let summary = "regroup the trailing dimensions of each token";
  let description = [{
    Keeps the leading (token) dimension and the element type and regroups the
    static trailing dimensions, e.g. `[T, heads * d]` to `[T, heads, d]`.

    ```mlir
    %q3 = melt.reshape %q : tensor<?x24576xbf16> -> tensor<?x128x192xbf16>
    ```
  }];
  let arguments = (ins AnyRankedTensor:$input);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Melt_ConvertOp : Melt_Op<"convert", [Pure]> {
  let summary = "change the float type of a tensor (round to nearest even)";
  let description = [{
    ```mlir
    %f = melt.convert %h : tensor<?x7168xbf16> -> tensor<?x7168xf32>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$input);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Melt_QuantizeOp : Melt_Op<"quantize", [Pure]> {
  let summary = "block-wise FP8 quantization with one FP32 scale per block";
  let description = [{
    Splits the input into blocks of `block` (one size per dimension; 1x128
    for DeepSeek-V3 activations), computes `scale = amax(block) / max(fp8)`
    per block and stores `x / scale` in FP8. The scales tensor has
    `ceil(size / block)` entries per dimension.

    ```mlir
    %q, %s = melt.quantize %x {block = array<i64: 1, 128>}
        : tensor<?x7168xbf16> -> tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$input, DenseI64ArrayAttr:$block);
  let results = (outs Melt_Fp8Tensor:$output, Melt_ScaleTensor:$scales);
  let assemblyFormat = [{
    $input attr-dict `:` type($input) `->` type($output) `,` type($scales)
  }];
  let hasVerifier = 1;
}

def Melt_DequantizeOp : Melt_Op<"dequantize", [Pure]> {
  let summary = "multiply FP8 blocks by their scales";
  let description = [{
    The inverse of `melt.quantize`: `x = q * scale(block)`.

    ```mlir
    %x = melt.dequantize %q, %s {block = array<i64: 1, 128>}
        : tensor<?x7168xf8E4M3FN>, tensor<?x56xf32> -> tensor<?x7168xbf16>
    ```
  }];
  let arguments = (ins Melt_Fp8Tensor:$input, Melt_ScaleTensor:$scales,
                       DenseI64ArrayAttr:$block);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = [{
    $input `,` $scales attr-dict `:` type($input) `,` type($scales) `->`
    type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Multi-token prediction
//===----------------------------------------------------------------------===//

def Melt_MTPCombineOp : Melt_WeightUserOp<"mtp_combine"> {
  let summary = "MTP input: eh_proj(concat(enorm(embedding), hnorm(hidden)))";
  let description = [{
    The entry of DeepSeek-V3's multi-token-prediction module: the embedding
    of token t+1 and the main model's final hidden state of token t are
    RMS-normalized (`enorm`, `hnorm`), concatenated — embedding first, as the
    checkpoint and vLLM order them — and projected back to the hidden size
    by `eh_proj` (`[hidden, 2 * hidden]`).

    ```mlir
    %x = melt.mtp_combine %emb, %h enorm @mtp.enorm hnorm @mtp.hnorm
        eh_proj @mtp.eh_proj {epsilon = 1.0e-06 : f64}
        : tensor<?x7168xbf16>, tensor<?x7168xbf16> -> tensor<?x7168xbf16>
    ```
  }];
  let arguments = (ins Melt_ActivationTensor:$embedded,
                       Melt_ActivationTensor:$hidden,
                       FlatSymbolRefAttr:$enorm, FlatSymbolRefAttr:$hnorm,
                       FlatSymbolRefAttr:$eh_proj, F64Attr:$epsilon,
                       OptionalAttr<Melt_PrecisionAttr>:$precision);
  let results = (outs Melt_ActivationTensor:$result);
  let assemblyFormat = [{
    $embedded `,` $hidden `enorm` $enorm `hnorm` $hnorm `eh_proj` $eh_proj
    attr-dict `:` type($embedded) `,` type($hidden) `->` type($result)
  }];
  let hasVerifier = 1;
}

#endif // MELT_DIALECT_MELTOPS_TD
