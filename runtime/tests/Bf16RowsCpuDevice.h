//===- Bf16RowsCpuDevice.h - a CPU device with BF16 products ----*- C++ -*-===//
//
// For the executor's tests of the BF16 rows a device's kernels prepare for
// BF16 products (the CUDA device's MELT_CUDA_BF16_INPUT_ROWS), without a
// GPU: a CPU device whose products of weights the model stores in BF16
// round their F32 input to BF16 first (as a GPU's BF16 GEMM reads it) and,
// where asked (preparesBf16Rows), whose norms and MLA calls write those
// rounded rows for them (leaving their own rows NaNs where nothing else
// reads them), and whose MoE input norms attach them for the router and the
// shared expert's products run apart. Counters say which paths ran.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TESTS_BF16ROWSCPUDEVICE_H
#define MELT_RUNTIME_TESTS_BF16ROWSCPUDEVICE_H

#include "PreparingCpuDevice.h"
#include "WeightData.h"

namespace melt::rt {

class Bf16RowsCpuDevice : public PreparingCpuDevice {
public:
  /// Whether norms prepare the BF16 rows (else every product rounds its
  /// input itself).
  bool preparesBf16Rows = false;
  int expertNorms = 0;
  int preparedProducts = 0, attachedReads = 0;

  /// A matrix the model stores in BF16 (the CPU holds its values in F32).
  static bool bf16Stored(const DeviceTensor &w) {
    const auto *weight = static_cast<const WeightData *>(w.prepared);
    return weight && weight->storage == WeightData::Storage::BF16;
  }
  bool roundsInputToBf16(const DeviceTensor &weight) const override {
    return bf16Stored(weight) && weight.shape.size() == 2;
  }
  bool fusesSiluMulInto(const DeviceTensor &weight) const override {
    return roundsInputToBf16(weight);
  }
  /// A BF16 product reads x rounded to BF16: the rows attached to x where
  /// a norm prepared them, else x rounded here.
  Status linear(const DeviceTensor &x, const DeviceTensor &w,
                DeviceTensor &y) override {
    if (!roundsInputToBf16(w) || x.dtype != DType::F32)
      return CpuDevice::linear(x, w, y);
    auto attached = attached_.find(x.data);
    if (attached != attached_.end() && attached->second.bf16.shape == x.shape) {
      ++attachedReads;
      return CpuDevice::linear(attached->second.bf16, w, y);
    }
    DeviceTensor rounded;
    MELT_RETURN_IF_ERROR(roundedCopy(x, rounded));
    Status s = CpuDevice::linear(rounded, w, y);
    release(rounded);
    return s;
  }

  bool preparesInNorm(const DeviceTensor &weight, int64_t) const override {
    return preparesBf16Rows && roundsInputToBf16(weight);
  }
  Status linearOfPrepared(const DeviceTensor &x, const PreparedInput &prepared,
                          const DeviceTensor &w, DeviceTensor &y) override {
    if (prepared.bf16.data && roundsInputToBf16(w) &&
        prepared.bf16.shape == x.shape) {
      ++preparedProducts;
      return CpuDevice::linear(prepared.bf16, w, y);
    }
    if (prepared.rowsUnwritten)
      return {MELT_INTERNAL, "linear: its input's rows were left unwritten"};
    return linear(x, w, y);
  }

  bool preparesForExperts(const DeviceTensor &, const DeviceTensor &gate,
                          int64_t) const override {
    return preparesBf16Rows && bf16Stored(gate);
  }
  /// The rows rounded, attached by the executor; y's own rows written
  /// always (the CPU's experts read them: its shared expert runs apart,
  /// so the executor asks for them anyway).
  Status addRmsNormForExperts(const DeviceTensor &a, const DeviceTensor &b,
                              const DeviceTensor &gamma, float eps,
                              DeviceTensor &sum, DeviceTensor &y,
                              const DeviceTensor &, PreparedInput &prepared,
                              bool) override {
    MELT_RETURN_IF_ERROR(addRmsNorm(a, b, gamma, eps, sum, y));
    ++expertNorms;
    return roundedCopy(y, prepared.bf16);
  }
  /// An MLA's output for the BF16 products that alone read it (o_proj,
  /// through the Reshape of a token's heads into one row).
  bool preparesInMla(const DeviceTensor &weight, int64_t) const override {
    return preparesBf16Rows && roundsInputToBf16(weight);
  }

private:
  /// A norm's or an MLA's output rows for the BF16 products: rounded.
  Status prepareRows(const DeviceTensor &rows, PreparedInput &into) override {
    return roundedCopy(rows, into.bf16);
  }
  /// x's values rounded to BF16, in F32 memory of their own.
  Status roundedCopy(const DeviceTensor &x, DeviceTensor &rounded) {
    MELT_RETURN_IF_ERROR(allocate(DType::F32, x.shape, rounded));
    Status s = copy(x, rounded);
    if (!s)
      s = roundToBf16(rounded);
    if (s)
      release(rounded);
    return s;
  }
};

} // namespace melt::rt

#endif // MELT_RUNTIME_TESTS_BF16ROWSCPUDEVICE_H
