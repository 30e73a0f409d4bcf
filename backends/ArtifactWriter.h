//===- ArtifactWriter.h - melt IR -> .melt artifact -------------*- C++ -*-===//
//
// Serializes a model-form module into the artifact the runtime executes:
// one kernel per op, one buffer per value (caches alias through appends),
// and the weight recipe with every checkpoint tensor resolved to a byte
// range of its shard.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_BACKENDS_ARTIFACTWRITER_H
#define MELT_BACKENDS_ARTIFACTWRITER_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/Error.h"

#include <string>

namespace mlir::melt {

class Checkpoint;

enum class Target { CPU };

struct ArtifactOptions {
  Target target = Target::CPU;
  /// Pack the checkpoint bytes of every weight into an aligned blob after
  /// the program: a self-contained artifact that needs no checkpoint.
  bool embedWeights = false;
};

/// The artifact bytes (header, FlatBuffer) of `module`, whose weights are
/// resolved in `checkpoint`.
llvm::Expected<std::string> buildArtifact(ModuleOp module,
                                          const Checkpoint &checkpoint,
                                          const ArtifactOptions &options);

} // namespace mlir::melt

#endif // MELT_BACKENDS_ARTIFACTWRITER_H
