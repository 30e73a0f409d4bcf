//===- Checkpoint.h - a Hugging Face checkpoint directory -------*- C++ -*-===//
//
// The tensors of a checkpoint directory: model.safetensors, or the shards
// that model.safetensors.index.json names. Index and headers are checked
// against each other: every shard exists inside the directory, no tensor is
// in two shards, the index and the headers agree.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_FRONTENDS_HF_CHECKPOINT_H
#define MELT_FRONTENDS_HF_CHECKPOINT_H

#include "frontends/hf/Safetensors.h"

#include "llvm/ADT/StringMap.h"
#include "llvm/Support/MemoryBuffer.h"

namespace mlir::melt {

struct CheckpointTensor {
  /// Shard file, relative to the checkpoint directory.
  std::string file;
  std::string dtype;
  std::vector<int64_t> shape;
  /// Absolute byte offset of the data in `file`, and its length.
  uint64_t offset = 0, bytes = 0;
};

class Checkpoint {
public:
  /// Reads the index (if any) and every shard header of `directory`.
  static llvm::Expected<Checkpoint> open(llvm::StringRef directory);

  const std::string &directory() const { return dir; }
  const CheckpointTensor *find(llvm::StringRef name) const {
    auto it = tensors.find(name);
    return it == tensors.end() ? nullptr : &it->second;
  }
  const llvm::StringMap<CheckpointTensor> &all() const { return tensors; }
  const std::vector<std::string> &shards() const { return shardFiles; }
  /// The full path of a shard file.
  std::string path(llvm::StringRef file) const;
  /// The bytes of tensor `t` of this checkpoint, read from its shard.
  llvm::ErrorOr<std::unique_ptr<llvm::MemoryBuffer>>
  readBytes(const CheckpointTensor &t) const;

private:
  std::string dir;
  llvm::StringMap<CheckpointTensor> tensors;
  std::vector<std::string> shardFiles;
};

/// Whether `file` (relative to a checkpoint directory) stays inside it: not
/// absolute, no "..", no empty components.
bool isContainedPath(llvm::StringRef file);

} // namespace mlir::melt

#endif // MELT_FRONTENDS_HF_CHECKPOINT_H
