//===- MeltAttrs.td - melt attributes ----------------------*- tablegen -*-===//
#ifndef MELT_DIALECT_MELTATTRS_TD
#define MELT_DIALECT_MELTATTRS_TD

include "dialects/melt/MeltBase.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/BuiltinAttributeInterfaces.td"

/// A double stored as an APFloat (hashable) and printed so that it
/// round-trips exactly.
class Melt_F64Parameter<string desc = ""> :
    AttrOrTypeParameter<"::llvm::APFloat", desc> {
  let comparator = "$_lhs.bitwiseIsEqual($_rhs)";
  let parser = "::mlir::melt::parseF64($_parser)";
  let printer = "$_printer.printFloat($_self)";
}

class Melt_Attr<string name, string attrMnemonic, list<Trait> traits = []>
    : AttrDef<Melt_Dialect, name, traits> {
  let mnemonic = attrMnemonic;
}

def Melt_TensorSourceAttr : Melt_Attr<"TensorSource", "tensor"> {
  let summary = "a tensor of the checkpoint, by name and optionally by file";
  let description = [{
    Names one tensor of a safetensors checkpoint. `file` is the shard that
    holds it, relative to the checkpoint directory; when it is absent the
    runtime resolves the name through `model.safetensors.index.json`.

    ```mlir
    #melt.tensor<"model.embed_tokens.weight">
    #melt.tensor<"model.norm.weight" in "model-00163-of-000163.safetensors">
    ```
  }];
  let parameters = (ins
    StringRefParameter<"checkpoint tensor name">:$name,
    StringRefParameter<"shard file, relative to the checkpoint", "\"\"">:$file);
  let assemblyFormat = "`<` $name (`in` $file^)? `>`";
  let genVerifyDecl = 1;
}

def Melt_WeightViewAttr : Melt_Attr<"WeightView", "weight_view"> {
  let summary = "a weight that is a slice of a reshaped checkpoint tensor";
  let description = [{
    Made by passes that derive weights from checkpoint tensors without
    materializing them: the tensor (of shape `source`) is reshaped to
    `shape` and sliced along `axis` from `offset`; the weight's own type
    gives the slice size. `melt-fuse-mla` splits kv_b_proj
    (`[heads * (nope + v), latent]`) into W_UK and W_UV this way. Block
    scales of such a weight describe the source tensor.

    ```mlir
    #melt.weight_view<source = [128, 32], shape = [4, 32, 32], axis = 1, offset = 0>
    ```
  }];
  let parameters = (ins
    ArrayRefParameter<"int64_t">:$source,
    ArrayRefParameter<"int64_t">:$shape,
    "int64_t":$axis,
    "int64_t":$offset);
  let assemblyFormat = [{
    `<` `source` `=` `[` $source `]` `,` `shape` `=` `[` $shape `]` `,`
    `axis` `=` $axis `,` `offset` `=` $offset `>`
  }];
  let genVerifyDecl = 1;
}

def Melt_YarnAttr : Melt_Attr<"Yarn", "yarn"> {
  let summary = "YaRN RoPE scaling parameters";
  let description = [{
    The YaRN context extension of DeepSeek-V2/V3: frequencies between the
    `beta_fast` and `beta_slow` rotation counts are interpolated by `factor`,
    and attention logits are scaled by the `mscale` terms.

    ```mlir
    #melt.yarn<factor = 40.0, original_max_position = 4096, beta_fast = 32.0,
               beta_slow = 1.0, mscale = 1.0, mscale_all_dim = 1.0>
    ```
  }];
  let parameters = (ins
    Melt_F64Parameter<"frequency interpolation factor">:$factor,
    "int64_t":$originalMaxPosition,
    Melt_F64Parameter<"rotations above which nothing is interpolated">:$betaFast,
    Melt_F64Parameter<"rotations below which all is interpolated">:$betaSlow,
    Melt_F64Parameter<"mscale of the rotary embedding">:$mscale,
    Melt_F64Parameter<"mscale of the softmax scale">:$mscaleAllDim);
  let assemblyFormat = [{
    `<` `factor` `=` $factor `,` `original_max_position` `=` $originalMaxPosition
    `,` `beta_fast` `=` $betaFast `,` `beta_slow` `=` $betaSlow
    `,` `mscale` `=` $mscale `,` `mscale_all_dim` `=` $mscaleAllDim `>`
  }];
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// The YaRN attention factor 0.1 * mscale * ln(factor) + 1 (1 when
    /// factor <= 1), as DeepSeek's reference computes it.
    static double attentionFactor(double factor, double mscale);
    /// The factor that multiplies the softmax scale of attention:
    /// (attentionFactor(factor, mscale_all_dim))^2, as in DeepSeek-V3.
    double softmaxScaleMultiplier() const;
  }];
}

def Melt_PrecisionAttr : Melt_Attr<"Precision", "precision"> {
  let summary = "compute, accumulation and output types of one op";
  let description = [{
    Chosen by `melt-assign-precision`. `compute` is the type the op's inputs
    are converted to, `accumulate` the type of its reductions, `output` the
    type it writes. FP8 compute needs block-scale geometry for activations
    (`act_block`, 1x128 in DeepSeek-V3) and weights (`weight_block`, 128x128).

    ```mlir
    #melt.precision<compute = f8E4M3FN, accumulate = f32, output = bf16,
                    act_block = [1, 128], weight_block = [128, 128]>
    #melt.precision<compute = f32, accumulate = f32, output = f32>
    ```
  }];
  let parameters = (ins
    "::mlir::Type":$compute,
    "::mlir::Type":$accumulate,
    "::mlir::Type":$output,
    OptionalArrayRefParameter<"int64_t">:$actBlock,
    OptionalArrayRefParameter<"int64_t">:$weightBlock);
  let assemblyFormat = [{
    `<` `compute` `=` $compute `,` `accumulate` `=` $accumulate
    `,` `output` `=` $output
    (`,` `act_block` `=` `[` $actBlock^ `]`)?
    (`,` `weight_block` `=` `[` $weightBlock^ `]`)? `>`
  }];
  let genVerifyDecl = 1;
}

def Melt_ExpertPlacementAttr : Melt_Attr<"ExpertPlacement", "expert_placement"> {
  let summary = "where every routed expert and its replicas run";
  let description = [{
    Chosen by `melt-plan-experts`. `slots` lists the expert held by each
    physical expert slot; slots are split evenly over `devices`, in order
    (slot `s` lives on device `s / (size(slots) / devices)`). An expert that
    appears in several slots is replicated. `load` is the expected share of
    routed token-expert assignments per device (from the load statistics the
    plan was made with), used by reports and by the runtime's balancer.

    ```mlir
    #melt.expert_placement<devices = 2, slots = [0, 3, 1, 2], load = [5120, 5087]>
    ```
  }];
  let parameters = (ins
    "int64_t":$devices,
    ArrayRefParameter<"int64_t">:$slots,
    OptionalArrayRefParameter<"int64_t">:$load);
  let assemblyFormat = [{
    `<` `devices` `=` $devices `,` `slots` `=` `[` $slots `]`
    (`,` `load` `=` `[` $load^ `]`)? `>`
  }];
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    int64_t getSlotsPerDevice() const {
      return getSlots().size() / getDevices();
    }
    /// Checks the placement against a MoE layer of `numExperts` experts:
    /// every id in range and every expert placed at least once.
    ::mlir::LogicalResult verifyForExperts(
        ::llvm::function_ref<::mlir::InFlightDiagnostic()> emitError,
        int64_t numExperts) const;
  }];
}

#endif // MELT_DIALECT_MELTATTRS_TD
