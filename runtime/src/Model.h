//===- Model.h - a loaded artifact with its weights -------------*- C++ -*-===//
#ifndef MELT_RUNTIME_MODEL_H
#define MELT_RUNTIME_MODEL_H

#include "Artifact.h"
#include "WeightData.h"

#include <memory>

namespace melt::rt {

/// An artifact and the weights its recipe makes, on the host. FP8
/// weights are dequantized once at load (block x scale_inv) into f32: no
/// per-step dequantization, at 4x the memory of the FP8 checkpoint.
class Model {
public:
  /// `keepHostData`: the model is for a device other than the CPU: every
  /// weight keeps its f32 values on the host (the device uploads them) and
  /// no CPU GEMM operands are prepacked.
  static Status load(const std::string &artifactPath,
                     const std::string &checkpointDir,
                     std::unique_ptr<Model> &out, bool keepHostData = false);
  static Status fromArtifact(Artifact artifact,
                             const std::string &checkpointDir,
                             std::unique_ptr<Model> &out,
                             bool keepHostData = false);
  /// For benchmarks without a checkpoint (as transformers' random init):
  /// every weight filled with seeded values (uniform, std 0.02; 1-D
  /// weights, the norm scales and router biases, 1 and 0), rounded to the
  /// model's storage precision, kept on the host for any device (no
  /// prepacked GEMMs: the CPU device multiplies the f32 values directly,
  /// slower than a loaded model there).
  static Status loadRandom(const std::string &artifactPath, uint64_t seed,
                           std::unique_ptr<Model> &out);

  const Artifact &artifact() const { return artifact_; }
  const WeightData &weight(uint32_t index) const { return weights_[index]; }
  int64_t vocabSize() const { return artifact_.model().info()->vocab_size(); }
  int64_t hiddenSize() const { return artifact_.model().info()->hidden_size(); }
  uint64_t weightBytes() const;

private:
  Status loadWeights(const std::string &checkpointDir);

  Artifact artifact_;
  std::vector<WeightData> weights_;
  bool keepHostData_ = false;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_MODEL_H
