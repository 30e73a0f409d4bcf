//===- QuantizingCpuDevice.h - a CPU device with FP8 products -*- C++ -*-===//
//
// For the executor's tests: a CPU device that multiplies the weights the
// model stores in FP8 as the CUDA device's FP8 products do, x quantized in
// 1x128 blocks inside linear(), and, where asked, takes an MLP's SiLU-mul
// into those products (linearOfSiluMul: siluMul then linear, into memory of
// its own, so that gate and up are read at the product's time), and where
// asked quantizes the FP8 experts' input itself (Device's
// moeExpertsOfQuantized: the pair into memory of its own) and takes one
// token's shared expert into the routed experts' call (Device's
// moeExpertsWithShared: the calls one after the other), and where asked
// prepares the FP8 products' input in the norms that make it.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TESTS_QUANTIZINGCPUDEVICE_H
#define MELT_RUNTIME_TESTS_QUANTIZINGCPUDEVICE_H

#include "CpuDevice.h"

#include <set>

namespace melt::rt {

class QuantizingCpuDevice : public CpuDevice {
public:
  explicit QuantizingCpuDevice(bool fusesSiluMul = false,
                               bool quantizesExperts = false,
                               bool fusesSharedExpert = false)
      : fusesSiluMul_(fusesSiluMul), quantizesExperts_(quantizesExperts),
        fusesSharedExpert_(fusesSharedExpert) {}

  Status importWeight(const WeightData &weight, DeviceTensor &out) override {
    MELT_RETURN_IF_ERROR(CpuDevice::importWeight(weight, out));
    if (weight.storage == WeightData::Storage::FP8Blocks)
      fp8Stored_.insert(out.data);
    return Status::ok();
  }
  bool quantizesFp8Input(const DeviceTensor &weight) const override {
    return fp8Stored_.count(weight.data) != 0;
  }
  bool fusesSiluMulInto(const DeviceTensor &weight) const override {
    return fusesSiluMul_ && quantizesFp8Input(weight);
  }
  Status linear(const DeviceTensor &x, const DeviceTensor &w,
                DeviceTensor &y) override {
    if (!quantizesFp8Input(w))
      return CpuDevice::linear(x, w, y);
    ++quantizedProducts;
    DeviceTensor dequantized;
    MELT_RETURN_IF_ERROR(quantizedRoundTrip(x, dequantized));
    Status s = CpuDevice::linear(dequantized, w, y);
    release(dequantized);
    return s;
  }
  bool quantizesExpertInput(const DeviceTensor &gate) const override {
    return quantizesExperts_ && fp8Stored_.count(gate.data) != 0;
  }
  Status moeExpertsOfQuantized(const DeviceTensor &x,
                               const DeviceTensor &indices,
                               const DeviceTensor &weights,
                               const DeviceTensor &gate, const DeviceTensor &up,
                               const DeviceTensor &down, bool combineBf16,
                               DeviceTensor &y) override {
    ++quantizedExperts;
    return CpuDevice::moeExpertsOfQuantized(x, indices, weights, gate, up, down,
                                            combineBf16, y);
  }
  Status linearOfSiluMul(const DeviceTensor &gate, const DeviceTensor &up,
                         const DeviceTensor &w, DeviceTensor &y) override {
    ++fusedProducts;
    return CpuDevice::linearOfSiluMul(gate, up, w, y);
  }

  bool fusesSharedExpert(const DeviceTensor &, const SharedExpert &,
                         int64_t tokens) const override {
    return fusesSharedExpert_ && tokens == 1;
  }
  Status moeExpertsWithShared(const DeviceTensor &x,
                              const DeviceTensor &indices,
                              const DeviceTensor &weights,
                              const DeviceTensor &gate, const DeviceTensor &up,
                              const DeviceTensor &down, bool combineBf16,
                              bool quantizedX, const SharedExpert &shared,
                              DeviceTensor &y) override {
    ++sharedExpertCalls;
    return CpuDevice::moeExpertsWithShared(x, indices, weights, gate, up, down,
                                           combineBf16, quantizedX, shared, y);
  }

  // Where preparesInNorms: the norms of the FP8 products' inputs quantize
  // them (the dequantized values, in memory of their own, stand in
  // prepared.q), and the products multiply those (linearOfPrepared).
  bool preparesInNorm(const DeviceTensor &weight, int64_t rows) const override {
    (void)rows;
    return preparesInNorms && quantizesFp8Input(weight);
  }
  Status rmsNormForProducts(const DeviceTensor &x, const DeviceTensor &gamma,
                            float eps, DeviceTensor &y,
                            PreparedInput &prepared) override {
    MELT_RETURN_IF_ERROR(rmsNorm(x, gamma, eps, y));
    ++preparingNorms;
    return quantizedRoundTrip(y, prepared.q);
  }
  Status addRmsNormForProducts(const DeviceTensor &a, const DeviceTensor &b,
                               const DeviceTensor &gamma, float eps,
                               DeviceTensor &sum, DeviceTensor &y,
                               PreparedInput &prepared) override {
    MELT_RETURN_IF_ERROR(addRmsNorm(a, b, gamma, eps, sum, y));
    ++preparingNorms;
    return quantizedRoundTrip(y, prepared.q);
  }
  Status linearOfPrepared(const DeviceTensor &x, const PreparedInput &prepared,
                          const DeviceTensor &w, DeviceTensor &y) override {
    if (!prepared.q.data || prepared.q.shape != x.shape)
      return linear(x, w, y);
    ++preparedProducts;
    return CpuDevice::linear(prepared.q, w, y);
  }

  bool preparesInNorms = false;
  int quantizedProducts = 0, fusedProducts = 0, quantizedExperts = 0,
      sharedExpertCalls = 0, preparingNorms = 0, preparedProducts = 0;

private:
  bool fusesSiluMul_, quantizesExperts_, fusesSharedExpert_;
  std::set<const void *> fp8Stored_;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_TESTS_QUANTIZINGCPUDEVICE_H
