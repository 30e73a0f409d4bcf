//===- Elementwise.h - row-wise and elementwise kernels (CUDA) --*- C++ -*-===//
//
// RMSNorm, SiLU-mul and add over F32 or BF16 tensors (each operand of its
// own type, FP32 math), and strided copies: the generic forms the CUDA
// device runs; the model path's fused forms (RMSNorm + FP8 quantization)
// are in Quantize.h.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_ELEMENTWISE_H
#define MELT_RUNTIME_CUDA_ELEMENTWISE_H

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace melt::rt::cuda {

/// An operand: its data and whether it is BF16 (else F32).
struct Operand {
  const void *data;
  bool bf16;
};
struct Result {
  void *data;
  bool bf16;
};

/// A MoE layer's output as its combine would make it (combineExpertRows,
/// ModelKernels.h: each token's expert rows weighted and summed in choice
/// order, then its shared expert's row added), for a norm's residual add
/// to make in place of reading b: the combine's [tokens, dim] F32 output
/// is then neither written nor read back (mini's 8x1024 prefill: 134 MB a
/// MoE layer). The same values (ExpertCombine.cuh).
struct CombinedRows {
  /// The experts' output rows [*, dim] (BF16 or F32) and, for each of a
  /// token's `choices` choices, its row there (negative: none) and weight.
  Operand expertOut{nullptr, false};
  const int32_t *rowOfPair = nullptr;
  const float *weights = nullptr;
  int choices = 0;
  /// Each expert row rounded to BF16 before it is weighted.
  bool combineBf16 = false;
  /// A shared expert's output [tokens, dim], added last (null: none).
  Operand plus{nullptr, false};
};

/// Whether addRmsNorm and rmsNormQuantizeRowsFp8 take `combined` in place
/// of b for these rows (a warp a row: normRowsByWarp of x and the sum, the
/// combine's rows aligned to 4 elements).
bool normTakesCombinedRows(int rows, int cols, Operand x, Result sum,
                           const CombinedRows &combined);

/// `yBf16` (where given): y's rows rounded to BF16 as well (a BF16
/// product's input, beside y's own type). `xPitch` (where not 0): x's rows
/// that many elements apart (a part of a wider matrix's columns), not
/// `cols` (y's are).
cudaError_t rmsNorm(Operand x, Operand gamma, float eps, int rows, int cols,
                    Result y, cudaStream_t stream,
                    __nv_bfloat16 *yBf16 = nullptr, int xPitch = 0);
/// rmsNorm into F32 y (or with `b`, addRmsNorm: sum = x + b as well), and
/// y's rows quantized as quantizeRowsFp8 quantizes them (cols a multiple
/// of 128): q [rows, cols] e4m3, scales [cols / 128, rows]. One kernel:
/// each block quantizes the row it has just normalized (kept in shared
/// memory where normRowsStage(cols)). y may be null where
/// normRowsStage(cols): the rows only quantized. `yBf16` (where given,
/// 8-byte aligned): y's rows rounded to BF16 as well. `xPitch` as
/// rmsNorm's (without `b` only). With `combined` (and b given, its values
/// unread), b's values are those rows' combine (normTakesCombinedRows must
/// hold: else cudaErrorInvalidValue).
cudaError_t rmsNormQuantizeRowsFp8(Operand x, const Operand *b, Result sum,
                                   Operand gamma, float eps, int rows, int cols,
                                   float *y, __nv_fp8_e4m3 *q, float *scales,
                                   cudaStream_t stream,
                                   __nv_bfloat16 *yBf16 = nullptr,
                                   int xPitch = 0,
                                   const CombinedRows *combined = nullptr);
/// Whether rmsNormQuantizeRowsFp8 keeps a row of `cols` in shared memory
/// (and so can leave y out).
bool normRowsStage(int cols);
/// sum = a + b (as binary(Add) stores it), y = rmsNorm(sum), one pass
/// (`yBf16` as rmsNorm's). With `combined`, b's values are those rows'
/// combine (b's data unread; normTakesCombinedRows must hold: else
/// cudaErrorInvalidValue).
cudaError_t addRmsNorm(Operand a, Operand b, Operand gamma, float eps, int rows,
                       int cols, Result sum, Result y, cudaStream_t stream,
                       __nv_bfloat16 *yBf16 = nullptr,
                       const CombinedRows *combined = nullptr);

/// y = x in y's type (rounded to BF16 where y is BF16).
cudaError_t convert(Operand x, size_t count, Result y, cudaStream_t stream);
/// x replaced by its values rounded to BF16 (nearest even), in place.
cudaError_t roundToBf16(float *x, size_t count, cudaStream_t stream);

/// `rows` runs of `runBytes` from `from` (runs `fromPitch` bytes apart) to
/// `to` (`toPitch` apart): a slice of a tensor along an axis, or its
/// placing back. 16 bytes a copy where every address and length allows,
/// else 4, else 1 (at most 2^31 copies: cudaErrorInvalidValue past it).
/// (The copy engine's 2-D copy moved a prefill's narrow runs, 256 bytes to
/// 2 KB, at a fraction of the SMs' bandwidth.)
cudaError_t copyRuns(void *to, size_t toPitch, const void *from,
                     size_t fromPitch, size_t runBytes, size_t rows,
                     cudaStream_t stream);

/// The most parts gatherParts copies in one launch.
constexpr int kMaxGatheredParts = 32;
/// Parts of 4-byte words, each to its offset (in words) of one tensor.
struct GatheredParts {
  const void *from[kMaxGatheredParts];
  uint32_t words[kMaxGatheredParts], offset[kMaxGatheredParts];
  int count = 0;
};
/// Each part's words into `to` at its offset, in one launch (a block a
/// part): a decode step's router choices gathered for one download, one
/// kernel where a copy a part took a launch each.
cudaError_t gatherParts(const GatheredParts &parts, void *to,
                        cudaStream_t stream);

enum class Binary { SiluMul, Add };
cudaError_t binary(Binary op, Operand a, Operand b, size_t count, Result y,
                   cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_ELEMENTWISE_H
