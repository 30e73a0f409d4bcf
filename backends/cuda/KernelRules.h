//===- KernelRules.h - what the CUDA runtime's kernels take -----*- C++ -*-===//
//
// The CUDA backend's rules for choosing, per op and shape, what the CUDA
// device does (melt-select-kernels applies them at compile time). They
// restate the constraints and measured crossovers of runtime/src/cuda:
// a rule changed there is changed here (the kernels check their shapes
// again at run time, so a stale rule costs speed, never correctness).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_BACKENDS_CUDA_KERNELRULES_H
#define MELT_BACKENDS_CUDA_KERNELRULES_H

#include <algorithm>
#include <cstdint>

namespace melt::cuda {

/// How the device keeps a weight.
enum class WeightFormat { F32, BF16, Fp8Blocks };

/// A K that is no multiple of 4 x 128 is stored with each row zero-padded
/// to the next one where that adds at most a quarter of the row
/// (CudaDevice's importFp8: mini's and V2-Lite's 1408 and 10944); a short
/// K (32 to 256) reads fewer bytes in F32 than padded to 512.
inline int64_t fp8GemmPaddedCols(int64_t cols) {
  return (cols + 511) / 512 * 512;
}
inline bool fp8GemmPadsCols(int64_t cols) {
  return cols > 0 && cols % 512 != 0 &&
         fp8GemmPaddedCols(cols) - cols <= cols / 4;
}

/// The FP8 block-scaled GEMMs (cuBLASLt and Fp8SmallM.cu) take [N, K]
/// weights with N a multiple of 16 and K of 4 x 128, or padded to one.
inline bool fp8GemmTakes(int64_t rows, int64_t cols) {
  return rows % 16 == 0 && (cols % 512 == 0 || fp8GemmPadsCols(cols));
}

/// The grouped expert kernels (MoeByExpert.cu) take FP8 stacks [E, N, K]
/// (e4m3 with a scale per 128x128 block of each expert) with N and K
/// multiples of 32, on tensor cores (moeByExpertTensorCoresFit).
inline bool fp8ExpertsTake(int64_t rows, int64_t cols) {
  return rows % 32 == 0 && cols % 32 == 0;
}

/// A weight's device format: GEMM-only operands stay in the narrow type the
/// model keeps them in (FP8 blocks where the FP8 kernels take the shape:
/// matrices the FP8 GEMMs, expert stacks the expert kernels; BF16);
/// everything else, and FP8 values no FP8 kernel takes, in F32 (exact).
inline WeightFormat weightFormat(bool gemmOnly, bool fp8, bool bf16, int rank,
                                 int64_t rows, int64_t cols) {
  if (!gemmOnly)
    return WeightFormat::F32;
  if (fp8) {
    bool takes = rank == 2   ? fp8GemmTakes(rows, cols)
                 : rank == 3 ? fp8ExpertsTake(rows, cols)
                             : false;
    return takes ? WeightFormat::Fp8Blocks : WeightFormat::F32;
  }
  return bf16 ? WeightFormat::BF16 : WeightFormat::F32;
}

/// Bytes of `elements` values in `format` with `blocks` 128x128 scales.
inline int64_t weightBytes(WeightFormat format, int64_t elements,
                           int64_t blocks) {
  switch (format) {
  case WeightFormat::Fp8Blocks:
    return elements + 4 * blocks;
  case WeightFormat::BF16:
    return 2 * elements;
  default:
    return 4 * elements;
  }
}

/// Rows the small-M kernels stream a weight for (SmallMGemm.h's
/// smallMGemmPays: rows x weight bytes within 40 MB, measured on the H200;
/// Fp8SmallM.cu: up to 8 tokens).
constexpr int64_t kSmallMMaxRows = 8;
constexpr double kSmallMBytes = 40e6;
inline int64_t smallMRows(WeightFormat format, int64_t bytes) {
  if (format == WeightFormat::Fp8Blocks)
    return kSmallMMaxRows;
  int64_t rows = int64_t(kSmallMBytes / double(std::max<int64_t>(bytes, 1)));
  return std::clamp<int64_t>(rows, 1, kSmallMMaxRows);
}

/// Grouped experts on tensor cores (MoeByExpert.cu): BF16 or FP8 weights,
/// the expert and hidden sizes multiples of 32.
inline bool expertsOnTensorCores(bool narrow, int64_t inter, int64_t hidden) {
  return narrow && inter % 32 == 0 && hidden % 32 == 0;
}

/// Absorbed MLA split over the sequence (MlaSplit.h's mlaSplitFits).
inline bool mlaSplits(int64_t latent, int64_t rope, int64_t nope) {
  return latent > 0 && latent <= 512 && nope > 0 && nope <= 256 &&
         latent % 4 == 0 && rope % 4 == 0 && latent + rope <= 640;
}

/// Absorbed MLA on tensor cores (MlaSplit.h's mlaTensorCoresFit and
/// mlaDecodeStepFits): attention computed in BF16 or narrower (queries and
/// latent rows rounded to BF16), DeepSeek's latent 512 and rope 64, the
/// heads in 16s. The runtime then keeps the latent cache in BF16 and runs
/// a decode step on MlaDecode.cu's kernel over it, a prefill on its causal
/// rows.
inline bool mlaOnTensorCores(bool narrowCompute, int64_t latent, int64_t rope,
                             int64_t nope, int64_t heads) {
  return narrowCompute && mlaSplits(latent, rope, nope) && latent == 512 &&
         rope == 64 && heads > 0 && heads % 16 == 0;
}

} // namespace melt::cuda

#endif // MELT_BACKENDS_CUDA_KERNELRULES_H
