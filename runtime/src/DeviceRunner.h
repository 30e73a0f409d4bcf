//===- DeviceRunner.h - a model's @forward on any Device --------*- C++ -*-===//
//
// Runs the artifact's @forward kernel by kernel through the Device
// interface, with the weights, activations and latent cache in the
// device's memory: the path by which a model runs on a GPU, and, on the
// CPU device, the proof that the interface carries a whole model (its
// logits are checked against the CPU session's in the tests).
//
// This first form runs one sequence at a time in F32 (weights at their
// stored values, activations unrounded: the fp32 precision policy), with
// a contiguous latent cache of fixed capacity. Kernels it does not run yet
// (FP8 quantize/dequantize, per-head KV caches, MTP) are refused with a
// clear error. Sessions of several sequences, paged caches and the
// BF16/FP8 kernels come next.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_DEVICERUNNER_H
#define MELT_RUNTIME_DEVICERUNNER_H

#include "Device.h"
#include "Model.h"

#include <map>

namespace melt::rt {

class DeviceRunner {
public:
  /// `model` must be loaded with keepHostData (its weights are uploaded);
  /// `capacity` tokens of latent cache are allocated on the device.
  static Status create(const Model &model, Device &device, int64_t capacity,
                       std::unique_ptr<DeviceRunner> &out);
  ~DeviceRunner();

  /// Runs @forward on `tokens` at the next positions and returns the
  /// logits of each, [tokens, vocab], on the host.
  Status append(const std::vector<int32_t> &tokens, std::vector<float> &logits);
  int64_t length() const { return length_; }

private:
  DeviceRunner(const Model &model, Device &device)
      : model_(model), device_(device) {}
  Status run(const std::vector<int32_t> &tokens, std::vector<float> &logits);

  const Model &model_;
  Device &device_;
  const fb::Function *forward_ = nullptr;
  /// By weight index; only the weights @forward reads.
  std::map<uint32_t, DeviceTensor> weights_;
  /// By cache buffer of @forward's inputs.
  std::map<uint32_t, DeviceTensor> caches_;
  int64_t capacity_ = 0, length_ = 0;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_DEVICERUNNER_H
