//===- Synthesizer.h - deterministic random checkpoints ---------*- C++ -*-===//
//
// Writes a complete Hugging Face checkpoint for any model configuration:
// config.json, safetensors shards, the index, and for FP8 the 128x128 block
// scales (weight_scale_inv) of each quantized weight. Values are a pure
// function of the seed and the tensor name, so any tensor can be
// regenerated; data is streamed in bounded memory, and the directory
// appears only when complete (written under a temporary name, then renamed).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_FRONTENDS_HF_SYNTHESIZER_H
#define MELT_FRONTENDS_HF_SYNTHESIZER_H

#include "frontends/ModelConfig.h"

#include "mlir/IR/MLIRContext.h"

#include <functional>

namespace mlir::melt {

struct SynthesisOptions {
  uint64_t seed = 0;
  /// A new shard starts when the current one would grow past this.
  uint64_t shardBytes = 4ull << 30;
  /// When non-zero: exactly this many shards of about equal size instead
  /// (as many as there are tensors at most).
  uint64_t shardCount = 0;
  /// Headers only: files are extended to their full size without writing
  /// data (sparse files, for import benchmarks of huge models).
  bool sparse = false;
  /// Called with (bytes written, total bytes) as data is written.
  std::function<void(uint64_t, uint64_t)> progress;
};

struct SynthesisSummary {
  uint64_t tensors = 0, shards = 0, bytes = 0;
};

llvm::Expected<SynthesisSummary>
synthesizeCheckpoint(MLIRContext &context, const ModelConfig &config,
                     llvm::StringRef directory,
                     const SynthesisOptions &options);

} // namespace mlir::melt

#endif // MELT_FRONTENDS_HF_SYNTHESIZER_H
