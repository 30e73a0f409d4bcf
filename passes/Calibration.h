//===- Calibration.h - measured GEMM errors for precision auto --*- C++ -*-===//
//
// What `melt-assign-precision=policy=auto` measures: the relative error of a
// GEMM's output when it runs in BF16 or in FP8 (1x128 activation, 128x128
// weight blocks), against FP32, on calibration inputs.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_PASSES_CALIBRATION_H
#define MELT_PASSES_CALIBRATION_H

#include "llvm/Support/Error.h"

#include <cstdint>
#include <vector>

namespace mlir::melt {

class Checkpoint;

struct GemmErrors {
  double bf16 = 0, fp8 = 0; // ||Y - Y_fp32|| / ||Y_fp32||
};

/// A [rows, cols] weight in f32, read from checkpoint tensor `name`
/// (BF16, F16, F32, or F8_E4M3 with `scaleName` block scales).
llvm::Expected<std::vector<float>>
readWeight(const Checkpoint &ckpt, llvm::StringRef name,
           llvm::StringRef scaleName, int64_t rows, int64_t cols);

/// Calibration inputs of width `cols`: tensor `input_<cols>` of the
/// safetensors file `path` when it has one, else 64 seeded Gaussian rows.
llvm::Expected<std::vector<float>> calibrationInputs(llvm::StringRef path,
                                                     int64_t cols,
                                                     int64_t &rows);

/// Errors of y = x W^T in BF16 and FP8; `weightIsFp8`: W is already FP8 (only
/// the activations are quantized then).
GemmErrors measureGemm(const std::vector<float> &x, int64_t rows,
                       const std::vector<float> &w, int64_t out, int64_t in,
                       bool weightIsFp8);

} // namespace mlir::melt

#endif // MELT_PASSES_CALIBRATION_H
