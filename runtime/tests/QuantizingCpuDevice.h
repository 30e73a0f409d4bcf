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
// moeExpertsWithShared: the calls one after the other), where asked
// prepares the FP8 products' input in the norms that make it, and where
// asked writes FP8 products in BF16 (the F32 product rounded, as
// roundToBf16 rounds it) and reads BF16 activations (adds, norms, ropes,
// SiLU-muls and the products that take them: widened; slices of BF16
// values: BF16 parts).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TESTS_QUANTIZINGCPUDEVICE_H
#define MELT_RUNTIME_TESTS_QUANTIZINGCPUDEVICE_H

#include "PreparingCpuDevice.h"

#include "melt/numerics.h"

#include <cstdint>
#include <cstring>
#include <functional>
#include <set>

namespace melt::rt {

class QuantizingCpuDevice : public PreparingCpuDevice {
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
    if (weight.storage == WeightData::Storage::BF16)
      bf16Stored_.insert(out.data);
    return Status::ok();
  }
  bool quantizesFp8Input(const DeviceTensor &weight) const override {
    return fp8Stored_.count(weight.data) != 0;
  }
  bool fusesSiluMulInto(const DeviceTensor &weight) const override {
    return fusesSiluMul_ && quantizesFp8Input(weight);
  }
  Status linear(const DeviceTensor &xIn, const DeviceTensor &w,
                DeviceTensor &y) override {
    attachedLinearReads += attached_.count(xIn.data) != 0;
    const DeviceTensor x = rowsOf(xIn);
    if (y.dtype == DType::BF16) {
      ++bf16Products;
      return intoBf16(y, [&](DeviceTensor &t) { return linear(x, w, t); });
    }
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
    attachedExpertReads += attached_.count(x.data) != 0;
    return CpuDevice::moeExpertsOfQuantized(rowsOf(x), indices, weights, gate,
                                            up, down, combineBf16, y);
  }
  Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                    const DeviceTensor &weights, const DeviceTensor &gate,
                    const DeviceTensor &up, const DeviceTensor &down,
                    bool combineBf16, DeviceTensor &y) override {
    attachedExpertReads += attached_.count(x.data) != 0;
    return CpuDevice::moeExperts(rowsOf(x), indices, weights, gate, up, down,
                                 combineBf16, y);
  }
  Status linearOfSiluMul(const DeviceTensor &gate, const DeviceTensor &up,
                         const DeviceTensor &w, DeviceTensor &y) override {
    if (y.dtype == DType::BF16) {
      ++bf16Products;
      return intoBf16(
          y, [&](DeviceTensor &t) { return linearOfSiluMul(gate, up, w, t); });
    }
    ++fusedProducts;
    return withF32Operands(gate, up,
                           [&](const DeviceTensor &g, const DeviceTensor &u) {
                             return CpuDevice::linearOfSiluMul(g, u, w, y);
                           });
  }
  Status siluMul(const DeviceTensor &gate, const DeviceTensor &up,
                 DeviceTensor &y) override {
    return withF32Operands(gate, up,
                           [&](const DeviceTensor &g, const DeviceTensor &u) {
                             return CpuDevice::siluMul(g, u, y);
                           });
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
    ++sharedExpertCalls; // (its experts' call counts an attached read)
    // (Its shared expert's products read x through linear(): the rows.)
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
  // (Their norms: PreparingCpuDevice's, prepareRows below; where asked,
  // rowsRead false, y's rows are NaNs after the norm, as unwritten memory
  // could hold: a reader of them shows in the results.)
  // Where preparesForExpertsInNorms: a MoE layer's input norm prepares
  // what its router and experts read (here as above: the dequantized
  // values), attached to its value until both have read it; they count
  // their reads of attached memory and compute as before.
  bool preparesForExperts(const DeviceTensor &router, const DeviceTensor &gate,
                          int64_t rows) const override {
    (void)router, (void)gate, (void)rows;
    return preparesForExpertsInNorms;
  }
  // Where asked (rowsRead false) y's rows are NaNs after the norm; the
  // router and the experts read a copy of them kept in prepared.bf16 (this
  // device's own use of it), attached, as the CUDA device's read what it
  // prepared: any other reader of y shows in the results.
  Status addRmsNormForExperts(const DeviceTensor &a, const DeviceTensor &b,
                              const DeviceTensor &gamma, float eps,
                              DeviceTensor &sum, DeviceTensor &y,
                              const DeviceTensor &, PreparedInput &prepared,
                              bool rowsRead) override {
    MELT_RETURN_IF_ERROR(addRmsNorm(a, b, gamma, eps, sum, y));
    ++expertNorms;
    MELT_RETURN_IF_ERROR(quantizedRoundTrip(y, prepared.q));
    if (rowsRead)
      return Status::ok();
    MELT_RETURN_IF_ERROR(allocate(y.dtype, y.shape, prepared.bf16));
    std::memcpy(prepared.bf16.data, y.data, y.bytes());
    ++unwrittenExpertNorms;
    return leaveUnwritten(y, prepared);
  }

  Status linearOfPrepared(const DeviceTensor &x, const PreparedInput &prepared,
                          const DeviceTensor &w, DeviceTensor &y) override {
    if (y.dtype == DType::BF16) {
      ++bf16Products;
      return intoBf16(y, [&](DeviceTensor &t) {
        return linearOfPrepared(x, prepared, w, t);
      });
    }
    if (!prepared.q.data || prepared.q.shape != x.shape)
      return linear(x, w, y);
    ++preparedProducts;
    return CpuDevice::linear(prepared.q, w, y);
  }

  // Where writesBf16Products: FP8 products in BF16, BF16 activations read;
  // where writesBf16WeightProducts, BF16 weights' products too (the CUDA
  // device by default, past its small-M kernel).
  bool linearWritesBf16(const DeviceTensor &weight,
                        int64_t rows) const override {
    (void)rows;
    return (writesBf16Products && quantizesFp8Input(weight)) ||
           (writesBf16WeightProducts && bf16Stored_.count(weight.data));
  }
  bool readsBf16Activations() const override {
    return writesBf16Products || writesBf16WeightProducts;
  }
  // Where takesMlaQueryInBf16: the MLA's query from its projection, a BF16
  // one widened first (what the CUDA device reads as the F32 of its
  // values), then the calls apart.
  bool fusesMlaQuery() const override { return takesMlaQueryInBf16; }
  bool mlaOfQueryReadsBf16() const override { return takesMlaQueryInBf16; }
  Status mlaOfQuery(const DeviceTensor &q, int64_t nope,
                    const DeviceTensor &positions, const RopeParams &rope,
                    const DeviceTensor &cache, const CacheLayout &layout,
                    const DeviceTensor &wUk, const DeviceTensor &wUv,
                    float scale, int64_t decompressAbove,
                    DeviceTensor &out) override {
    if (q.dtype == DType::BF16)
      ++bf16Queries;
    // (Its output prepared once, here, whatever the base calls.)
    PreparedInput *into = mlaOutput_;
    mlaOutput_ = nullptr;
    Status s = withF32(q, [&](const DeviceTensor &wide) {
      return CpuDevice::mlaOfQuery(wide, nope, positions, rope, cache, layout,
                                   wUk, wUv, scale, decompressAbove, out);
    });
    mlaOutput_ = into;
    return s ? s : prepareMlaRows(out);
  }
  // Where preparesMlaOutputs: an MLA's output prepared for the FP8
  // products that alone read it (the dequantized values of its rows, a
  // token's heads in one row, in memory of their own).
  bool preparesInMla(const DeviceTensor &weight, int64_t rows) const override {
    (void)rows;
    return preparesMlaOutputs && quantizesFp8Input(weight);
  }
  Status rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma, float eps,
                 DeviceTensor &y) override {
    return withF32(x, [&](const DeviceTensor &u) {
      return CpuDevice::rmsNorm(u, gamma, eps, y);
    });
  }
  Status rope(const DeviceTensor &x, const DeviceTensor &positions,
              const RopeParams &params, DeviceTensor &y) override {
    return withF32(x, [&](const DeviceTensor &u) {
      return CpuDevice::rope(u, positions, params, y);
    });
  }
  Status slice(const DeviceTensor &x, int axis, int64_t offset,
               DeviceTensor &y) override {
    if (x.dtype != DType::BF16 || y.dtype != DType::BF16)
      return CpuDevice::slice(x, axis, offset, y);
    // The F32 part of the widened values, rounded back (exactly).
    return intoBf16(y, [&](DeviceTensor &part) {
      return withF32(x, [&](const DeviceTensor &u) {
        return CpuDevice::slice(u, axis, offset, part);
      });
    });
  }
  Status add(const DeviceTensor &a, const DeviceTensor &b,
             DeviceTensor &y) override {
    return withF32Operands(a, b,
                           [&](const DeviceTensor &u, const DeviceTensor &v) {
                             return CpuDevice::add(u, v, y);
                           });
  }
  Status addRmsNorm(const DeviceTensor &a, const DeviceTensor &b,
                    const DeviceTensor &gamma, float eps, DeviceTensor &sum,
                    DeviceTensor &y) override {
    return withF32Operands(
        a, b, [&](const DeviceTensor &u, const DeviceTensor &v) {
          return CpuDevice::addRmsNorm(u, v, gamma, eps, sum, y);
        });
  }

  bool preparesInNorms = false, preparesMlaOutputs = false,
       writesBf16Products = false, writesBf16WeightProducts = false,
       takesMlaQueryInBf16 = false, preparesForExpertsInNorms = false;
  int expertNorms = 0, attachedLinearReads = 0, attachedExpertReads = 0;
  int bf16Products = 0, bf16Reads = 0, bf16Queries = 0;
  int quantizedProducts = 0, fusedProducts = 0, quantizedExperts = 0,
      sharedExpertCalls = 0, preparedProducts = 0, unwrittenExpertNorms = 0;

private:
  /// A norm's or an MLA's output rows for the FP8 products: their
  /// dequantized values.
  Status prepareRows(const DeviceTensor &rows, PreparedInput &into) override {
    return quantizedRoundTrip(rows, into.q);
  }
  /// x, or the rows kept in place of x's where a norm left them unwritten.
  DeviceTensor rowsOf(const DeviceTensor &x) const {
    auto it = attached_.find(x.data);
    if (it == attached_.end() || !it->second.rowsUnwritten)
      return x;
    DeviceTensor rows = it->second.bf16;
    rows.shape = x.shape;
    return rows;
  }
  /// The F32 product(t) rounded into BF16 y.
  Status intoBf16(DeviceTensor &y,
                  const std::function<Status(DeviceTensor &)> &product) {
    DeviceTensor wide;
    MELT_RETURN_IF_ERROR(allocate(DType::F32, y.shape, wide));
    Status s = product(wide);
    if (!s) {
      const float *from = static_cast<const float *>(wide.data);
      uint16_t *to = static_cast<uint16_t *>(y.data);
      for (int64_t i = 0; i < y.numel(); ++i)
        to[i] = melt::floatToBF16(from[i]);
    }
    release(wide);
    return s;
  }
  /// f(t), t widened to F32 (exactly) where it is BF16 (its rows packed
  /// where t is a part left in place).
  Status withF32(const DeviceTensor &t,
                 const std::function<Status(const DeviceTensor &)> &f) {
    if (t.dtype != DType::BF16)
      return f(t);
    DeviceTensor wide;
    MELT_RETURN_IF_ERROR(allocate(DType::F32, t.shape, wide));
    const uint16_t *from = static_cast<const uint16_t *>(t.data);
    float *to = static_cast<float *>(wide.data);
    const int64_t cols = t.shape.empty() ? 1 : t.shape.back(),
                  pitch = t.rowPitch ? t.rowPitch : cols;
    for (int64_t e = 0; e < t.numel(); ++e)
      to[e] = melt::bf16ToFloat(from[e / cols * pitch + e % cols]);
    ++bf16Reads;
    Status s = f(wide);
    release(wide);
    return s;
  }
  /// f(a, b), each widened as withF32.
  Status withF32Operands(const DeviceTensor &a, const DeviceTensor &b,
                         const std::function<Status(const DeviceTensor &,
                                                    const DeviceTensor &)> &f) {
    return withF32(a, [&](const DeviceTensor &u) {
      return withF32(b, [&](const DeviceTensor &v) { return f(u, v); });
    });
  }

  bool fusesSiluMul_, quantizesExperts_, fusesSharedExpert_;
  std::set<const void *> fp8Stored_, bf16Stored_; // by their storage
};

} // namespace melt::rt

#endif // MELT_RUNTIME_TESTS_QUANTIZINGCPUDEVICE_H
