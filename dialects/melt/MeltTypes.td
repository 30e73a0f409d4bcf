//===- MeltTypes.td - melt types ---------------------------*- tablegen -*-===//
#ifndef MELT_DIALECT_MELTTYPES_TD
#define MELT_DIALECT_MELTTYPES_TD

include "dialects/melt/MeltBase.td"
include "mlir/IR/AttrTypeBase.td"

class Melt_Type<string name, string typeMnemonic, list<Trait> traits = []>
    : TypeDef<Melt_Dialect, name, traits> {
  let mnemonic = typeMnemonic;
}

def Melt_KVCacheType : Melt_Type<"KVCache", "kv_cache"> {
  let summary = "per-head key/value cache of one attention layer";
  let description = [{
    The naive cache of multi-head attention: for each cached token, a key of
    `key_dim` and a value of `value_dim` per head. This is what the importer
    produces for MLA (keys are `qk_nope_head_dim + qk_rope_head_dim` wide);
    `melt-fuse-mla` replaces it by `!melt.latent_cache`.

    ```mlir
    !melt.kv_cache<heads = 128, key_dim = 192, value_dim = 128, bf16>
    ```
  }];
  let parameters = (ins
    "int64_t":$heads,
    "int64_t":$keyDim,
    "int64_t":$valueDim,
    "::mlir::Type":$elementType);
  let assemblyFormat = [{
    `<` `heads` `=` $heads `,` `key_dim` `=` $keyDim `,` `value_dim` `=`
    $valueDim `,` $elementType `>`
  }];
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// Values stored per token (all heads, keys and values).
    int64_t getValuesPerToken() const {
      return getHeads() * (getKeyDim() + getValueDim());
    }
  }];
}

def Melt_LatentCacheType : Melt_Type<"LatentCache", "latent_cache"> {
  let summary = "MLA latent cache: compressed KV plus the shared RoPE key";
  let description = [{
    The cache of absorbed multi-head latent attention: for each token, the
    normalized compressed KV vector (`latent`, kv_lora_rank) and the RoPE key
    shared by all heads (`rope`, qk_rope_head_dim). For DeepSeek-V3 that is
    512 + 64 = 576 values per token per layer, about 71x less than the
    per-head cache.

    ```mlir
    !melt.latent_cache<latent = 512, rope = 64, bf16>
    ```
  }];
  let parameters = (ins
    "int64_t":$latentDim,
    "int64_t":$ropeDim,
    "::mlir::Type":$elementType);
  let assemblyFormat = [{
    `<` `latent` `=` $latentDim `,` `rope` `=` $ropeDim `,` $elementType `>`
  }];
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    int64_t getValuesPerToken() const { return getLatentDim() + getRopeDim(); }
  }];
}

#endif // MELT_DIALECT_MELTTYPES_TD
