//===- GroupedGemmFp8.h - grouped gate/up on FP8 tensor cores ---*- C++ -*-===//
//
// A prefill's FP8 experts as DeepSeek-V3 multiplies them: x quantized in
// 1 x 128 blocks, the weights in 128 x 128 blocks, e4m3 codes multiplied
// on Hopper's FP8 warpgroup MMA (twice BF16's rate), each 128 of k summed
// in F32 apart and added times its two scales. The gate/up pair in one
// launch for every expert (as GroupedGemm.h's pair: SiLU(gate) * up, each
// product rounded to BF16 first), the same products as cuBLASLt's
// block-scaled FP8 GEMM that the host's grouping runs.
//
// The device's default for FP8 stacks' gate and up in a prefill; with
// MELT_CUDA_FP8_GROUPED_WGMMA=0 it widens them to BF16 in GroupedGemm.h's
// kernel instead (the down product is widened either way).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_GROUPEDGEMMFP8_H
#define MELT_RUNTIME_CUDA_GROUPEDGEMMFP8_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace melt::rt::cuda {

struct GroupedFp8PairArgs {
  /// [capacity, k] e4m3 codes: group e's rows are [starts[e], starts[e+1]).
  const uint8_t *x = nullptr;
  /// [k / 128, capacity]: row r's scale for its block b at b * capacity + r.
  const float *xScales = nullptr;
  /// [groups, n, k] e4m3 codes, and their scales [groups, n / 128, k / 128].
  const uint8_t *gate = nullptr, *up = nullptr;
  const float *gateScales = nullptr, *upScales = nullptr;
  /// [capacity, n]: SiLU(x gate^T) * (x up^T), each product rounded to
  /// BF16 first (rows past starts[groups] are not written).
  __nv_bfloat16 *y = nullptr;
  /// On the device: groups + 1 non-decreasing multiples of 128, the first
  /// 0, the last at most `capacity`.
  const int32_t *starts = nullptr;
  int groups = 0, capacity = 0, n = 0, k = 0;
};

/// Whether the kernel takes the shape: n, k and capacity multiples of 128,
/// the operands 16-byte aligned.
bool groupedFp8PairFits(const GroupedFp8PairArgs &args);

/// Launches the pair on `stream` (no wait).
cudaError_t groupedGemmFp8Pair(const GroupedFp8PairArgs &args,
                               cudaStream_t stream);

/// codes[r] = x[tokenOfRow[r]] and scales likewise for r < count: x's rows
/// quantized once per token ([tokens, dim] codes, [dim / 128, tokens]
/// scales) gathered into the grouped operand ([count, dim], [dim / 128,
/// count]).
cudaError_t gatherFp8Rows(const uint8_t *x, const float *xScales, int tokens,
                          const int32_t *tokenOfRow, int count, int dim,
                          uint8_t *codes, float *scales, cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_GROUPEDGEMMFP8_H
