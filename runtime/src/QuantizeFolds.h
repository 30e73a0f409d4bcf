//===- QuantizeFolds.h - activation quantization a product does itself ----===//
//
// melt-assign-precision puts dequantize(quantize(x)) in 1x128 FP8 blocks in
// front of every FP8 product: the reference form of DeepSeek-V3's activation
// quantization, which a device that multiplies in F32 runs as two kernels.
// A device that keeps a weight in FP8 quantizes the product's input in its
// FP8 GEMM the same way, so that the pair in front of it is work done
// twice: where the dequantized value feeds only such products, the pair
// folds away (the products read x). The same for a device whose expert
// kernels quantize their input themselves (Device::quantizesExpertInput).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_QUANTIZEFOLDS_H
#define MELT_RUNTIME_QUANTIZEFOLDS_H

#include "Artifact.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace melt::rt {

/// A quantize kernel, the dequantize kernel that alone reads its outputs,
/// and the buffer the pair started from (x).
struct QuantizeFold {
  uint32_t quantize = 0, dequantize = 0, source = 0;
};

/// The pairs of `function` (1 x 128 blocks) whose dequantized value is read
/// only as the input of Linear or MoEExperts kernels for which
/// `quantizesInput(kernel)` holds, and is no output of the function.
std::vector<QuantizeFold>
findQuantizeFolds(const fb::Model &model, const fb::Function &function,
                  const std::function<bool(uint32_t kernel)> &quantizesInput);

} // namespace melt::rt

#endif // MELT_RUNTIME_QUANTIZEFOLDS_H
