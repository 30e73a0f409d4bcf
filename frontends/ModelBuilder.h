//===- ModelBuilder.h - model configuration -> melt IR ----------*- C++ -*-===//
//
// Builds the model form of a DeepSeek-V2/V3-style model: weights as external
// melt.weight symbols named after the checkpoint tensors, a @forward
// function for the main model and one @mtp_N function per MTP layer.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_FRONTENDS_MODELBUILDER_H
#define MELT_FRONTENDS_MODELBUILDER_H

#include "frontends/ModelConfig.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

#include <functional>

namespace mlir::melt {

struct BuildOptions {
  /// Returns the shard file of a checkpoint tensor, or "" when unknown (the
  /// runtime then resolves the name through the index).
  std::function<std::string(llvm::StringRef tensorName)> fileOf;
  /// Returns the element type a checkpoint stores a tensor in, or null to
  /// keep the configuration's. Not consulted for the FP8 GEMM weights of a
  /// block-quantized model, whose type the format fixes.
  std::function<mlir::Type(llvm::StringRef tensorName)> elementTypeOf;
  /// The module's melt.model attribute; the configuration's name if empty.
  std::string modelName;
};

/// Validates `config` and builds its model-form IR. The module verifies.
llvm::Expected<mlir::OwningOpRef<mlir::ModuleOp>>
buildModel(mlir::MLIRContext &context, const ModelConfig &config,
           const BuildOptions &options = {});

} // namespace mlir::melt

#endif // MELT_FRONTENDS_MODELBUILDER_H
