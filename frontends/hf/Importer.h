//===- Importer.h - Hugging Face checkpoint -> melt IR ----------*- C++ -*-===//
//
// Imports a DeepSeek-V2/V3 checkpoint directory: config.json, the index and
// the safetensors headers (never the weight data, except the small FP8 scale
// tensors, which are checked for NaN). Every tensor the configuration
// implies must exist with the expected shape and dtype; tensors the model
// does not use are reported as warnings.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_FRONTENDS_HF_IMPORTER_H
#define MELT_FRONTENDS_HF_IMPORTER_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "llvm/Support/Error.h"

#include <string>
#include <vector>

namespace mlir::melt {

struct ImportOptions {
  /// Read the FP8 scale tensors and reject non-finite or negative scales.
  bool checkScales = true;
};

struct ImportResult {
  OwningOpRef<ModuleOp> module;
  std::vector<std::string> warnings;
};

llvm::Expected<ImportResult> importCheckpoint(MLIRContext &context,
                                              llvm::StringRef directory,
                                              const ImportOptions &options = {});

/// The safetensors dtype melt stores an MLIR element type as ("BF16", ...).
std::string safetensorsDTypeOf(Type type);

} // namespace mlir::melt

#endif // MELT_FRONTENDS_HF_IMPORTER_H
