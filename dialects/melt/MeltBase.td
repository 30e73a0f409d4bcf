//===- MeltBase.td - the melt dialect and its enums --------*- tablegen -*-===//
//
// The melt dialect describes whole DeepSeek-V3-style models (MLA, DeepSeekMoE,
// MTP) at the level of their blocks, so that passes can choose precision per
// op, fuse the MLA latent projections and plan expert placement.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_DIALECT_MELTBASE_TD
#define MELT_DIALECT_MELTBASE_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/EnumAttr.td"

def Melt_Dialect : Dialect {
  let name = "melt";
  let cppNamespace = "::mlir::melt";
  let summary = "DeepSeek-V3-style models: MLA, DeepSeekMoE and MTP as ops";
  let description = [{
    The `melt` dialect expresses a whole DeepSeek-V3, DeepSeek-V2 or
    DeepSeek-V2-Lite model, the multi-token-prediction (MTP) module included.

    **Model form.** The importer writes ops that are faithful to the
    checkpoint: `melt.embedding`, `melt.rms_norm`, `melt.linear`, `melt.rope`,
    `melt.attention` over a per-head K/V cache, `melt.moe_router`,
    `melt.moe_experts`, `melt.mtp_combine` and `melt.logits`. Weights are
    module-level `melt.weight` symbols that name their source (checkpoint
    tensor, optionally its file) — weight data is never part of the IR. Ops
    refer to weights by symbol; their verifiers check shapes against the
    symbol's type.

    **Planned form.** Passes rewrite the model: `melt.mla` runs attention on
    a latent cache (`!melt.latent_cache`), `#melt.precision` fixes compute,
    accumulation and output types and block-scale geometry per op,
    `#melt.expert_placement` places experts and their replicas on devices.

    **Execution model.** A function processes `T` new tokens of one sequence
    (`tensor<?x...>` leading dimension) at the positions given by a
    `tensor<?xi64>` operand; caches are values threaded through the function
    (each append yields the new cache). Batching of several sequences is the
    runtime's job.
  }];
  let useDefaultAttributePrinterParser = 1;
  let useDefaultTypePrinterParser = 1;
}

//===----------------------------------------------------------------------===//
// Enums
//===----------------------------------------------------------------------===//

def Melt_ScoringFunc : I32EnumAttr<"ScoringFunc",
    "how router logits become expert scores", [
      I32EnumAttrCase<"sigmoid", 0>,
      I32EnumAttrCase<"softmax", 1>,
    ]> {
  let genSpecializedAttr = 0;
  let cppNamespace = "::mlir::melt";
}
def Melt_ScoringFuncAttr : EnumAttr<Melt_Dialect, Melt_ScoringFunc, "scoring">;

def Melt_TopkMethod : I32EnumAttr<"TopkMethod",
    "how experts are selected from scores", [
      // Top-k over all experts (DeepSeek-V2-Lite).
      I32EnumAttrCase<"greedy", 0>,
      // Keep topk_group groups by their best score, then top-k (DeepSeek-V2).
      I32EnumAttrCase<"group_limited_greedy", 1>,
      // Keep groups by the sum of their top-2 biased scores, then top-k by
      // biased score; weights are the unbiased scores (DeepSeek-V3).
      I32EnumAttrCase<"noaux_tc", 2>,
    ]> {
  let genSpecializedAttr = 0;
  let cppNamespace = "::mlir::melt";
}
def Melt_TopkMethodAttr : EnumAttr<Melt_Dialect, Melt_TopkMethod, "topk_method">;

#endif // MELT_DIALECT_MELTBASE_TD
