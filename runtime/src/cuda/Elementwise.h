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
/// rmsNorm's (without `b` only).
cudaError_t rmsNormQuantizeRowsFp8(Operand x, const Operand *b, Result sum,
                                   Operand gamma, float eps, int rows, int cols,
                                   float *y, __nv_fp8_e4m3 *q, float *scales,
                                   cudaStream_t stream,
                                   __nv_bfloat16 *yBf16 = nullptr,
                                   int xPitch = 0);
/// Whether rmsNormQuantizeRowsFp8 keeps a row of `cols` in shared memory
/// (and so can leave y out).
bool normRowsStage(int cols);
/// sum = a + b (as binary(Add) stores it), y = rmsNorm(sum), one pass
/// (`yBf16` as rmsNorm's).
cudaError_t addRmsNorm(Operand a, Operand b, Operand gamma, float eps, int rows,
                       int cols, Result sum, Result y, cudaStream_t stream,
                       __nv_bfloat16 *yBf16 = nullptr);

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
