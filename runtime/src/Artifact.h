//===- Artifact.h - loading and checking .melt files ------------*- C++ -*-===//
//
// Loading checks, in order: the fixed header (magic, version: same major,
// older or equal minor; sizes and offsets with overflow-safe arithmetic),
// the checksum, the FlatBuffers verifier with the "MELT" identifier, then
// the meaning: every index in range, every kernel with the operands and
// parameters its kind needs, every weight's byte ranges consistent with its
// shape and type. Messages are indexed: "kernels[12].inputs[1] refers to
// buffer 99 of 40".
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_ARTIFACT_H
#define MELT_RUNTIME_ARTIFACT_H

#include "Status.h"

#include "melt/artifact_generated.h"

#include <cstdint>
#include <string>
#include <vector>

namespace melt::rt {

namespace fb = ::melt::artifact;

class Artifact {
public:
  /// Reads and checks `path`.
  static Status load(const std::string &path, Artifact &out);
  /// Checks artifact bytes already in memory (`name` names them in errors).
  static Status fromBytes(std::vector<uint8_t> bytes, const std::string &name,
                          Artifact &out);

  const fb::Model &model() const { return *model_; }
  /// The embedded weight blob (empty unless compiled with --embed-weights).
  const uint8_t *blob() const { return bytes_.data() + blobOffset_; }
  uint64_t blobSize() const { return blobSize_; }
  const std::string &name() const { return name_; }
  /// The function named `name`, or null.
  const fb::Function *function(const std::string &name) const;
  /// The device kind it was compiled for ("cpu" when the artifact names
  /// none).
  std::string target() const {
    return model_->target() ? model_->target()->str() : "cpu";
  }

private:
  Status checkMeaning() const;
  Status checkWeight(uint32_t index) const;

  std::vector<uint8_t> bytes_;
  std::string name_;
  const fb::Model *model_ = nullptr;
  uint64_t blobOffset_ = 0, blobSize_ = 0;
};

/// Bytes per element of a dtype (FP8 is 1).
uint64_t dtypeBytes(fb::DType dtype);

/// A Linear kernel's output precision (its ints[0], checked on loading).
enum class LinearOutput {
  F32 = 0,
  RoundedToBf16 = 1, ///< BF16 values: an FP8 product's
  Bf16MayKeepF32 = 2 ///< BF16, which the runtime may keep in F32: a BF16
                     ///< product's (the bf16 policy)
};
inline LinearOutput linearOutputOf(const fb::Kernel &linear) {
  return linear.ints() && linear.ints()->size() > 0
             ? static_cast<LinearOutput>(linear.ints()->Get(0))
             : LinearOutput::F32;
}
/// Whether a Linear's F32 result is to be rounded to BF16 values.
inline bool roundsLinearOutput(const fb::Kernel &linear) {
  return linearOutputOf(linear) == LinearOutput::RoundedToBf16;
}

} // namespace melt::rt

#endif // MELT_RUNTIME_ARTIFACT_H
