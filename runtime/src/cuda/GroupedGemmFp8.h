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
// kernel instead. The down product of the pair's output quantized in 1 x
// 128 blocks (DeepSeek-V3's recipe for every expert product) runs here too
// (groupedGemmFp8) where MELT_CUDA_FP8_GROUPED_DOWN=1, else widened in
// GroupedGemm.h's kernel.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_GROUPEDGEMMFP8_H
#define MELT_RUNTIME_CUDA_GROUPEDGEMMFP8_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace melt::rt::cuda {

/// How the grouped FP8 kernels run (GroupedGemmFp8.cu; the same sums
/// either way): the device's choice, or the other ways for comparison.
struct GroupedFp8Options {
  /// The single product 256 columns a block where n takes them (else 128).
  /// On the H200, mini's down product (8192 tokens) 426 against 485 us
  /// (bench/results/grouped_fp8_producer_wide_s25_h200.txt).
  bool wideColumns = true;
  /// A block an SM going over the tiles, the next tile's loads under a
  /// tile's store (else a block a tile).
  bool persistent = false;
  /// BF16 rows written 16 bytes a lane, whole sectors a store
  /// (FragmentStores.cuh); false: 4 bytes a lane, as the fragment holds
  /// them. The same values either way.
  bool wideStores = true;
};

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
  /// Or (y null) the same BF16 rows quantized as quantizeRowsFp8 quantizes
  /// them: [capacity, n] e4m3 codes and [n / 128, capacity] scales (a row's
  /// block b at b * capacity + row), the input of an FP8 product.
  uint8_t *yCodes = nullptr;
  float *yScales = nullptr;
  /// On the device: groups + 1 non-decreasing multiples of 128, the first
  /// 0, the last at most `capacity`.
  const int32_t *starts = nullptr;
  /// Where given, on the device, [groups]: where each group's rows of
  /// interest end (ExpertGrouping.h's `ends`; GroupedGemm.h's likewise):
  /// a warpgroup whose 64 rows of a tile are all padding skips its
  /// products, and padding rows are not written.
  const int32_t *ends = nullptr;
  int groups = 0, capacity = 0, n = 0, k = 0;
  GroupedFp8Options options;
};

/// Whether the kernel takes the shape: n, k and capacity multiples of 128,
/// the operands 16-byte aligned, one output (y, or yCodes and yScales).
bool groupedFp8PairFits(const GroupedFp8PairArgs &args);

/// Launches the pair on `stream` (no wait).
cudaError_t groupedGemmFp8Pair(const GroupedFp8PairArgs &args,
                               cudaStream_t stream);

/// One grouped FP8 product (the experts' down projection of the pair's
/// FP8 output): y[r] = x[r] w[e]^T for the rows of group e, each 128 of k
/// summed in F32 apart and added times its two scales.
struct GroupedFp8Args {
  /// [capacity, k] e4m3 codes and [k / 128, capacity] scales.
  const uint8_t *x = nullptr;
  const float *xScales = nullptr;
  /// [groups, n, k] e4m3 codes, and their scales [groups, n / 128, k / 128].
  const uint8_t *w = nullptr;
  const float *wScales = nullptr;
  /// [capacity, n], BF16 (y) or F32 (yF32): one of the two (rows past
  /// starts[groups] are not written).
  __nv_bfloat16 *y = nullptr;
  float *yF32 = nullptr;
  /// As GroupedFp8PairArgs::starts and ends.
  const int32_t *starts = nullptr;
  const int32_t *ends = nullptr;
  int groups = 0, capacity = 0, n = 0, k = 0;
  GroupedFp8Options options;
};

/// Whether groupedGemmFp8 takes the shape (as groupedFp8PairFits).
bool groupedFp8Fits(const GroupedFp8Args &args);

/// Launches the product on `stream` (no wait).
cudaError_t groupedGemmFp8(const GroupedFp8Args &args, cudaStream_t stream);

/// codes[r] = x[tokenOfRow[r]] and scales likewise for r < count: x's rows
/// quantized once per token ([tokens, dim] codes, [dim / 128, tokens]
/// scales) gathered into the grouped operand ([count, dim], [dim / 128,
/// count]). Where `rowsUsed` (one value on the device) is given, rows at or
/// past it are left unwritten (the padding past the last group).
cudaError_t gatherFp8Rows(const uint8_t *x, const float *xScales, int tokens,
                          const int32_t *tokenOfRow, int count, int dim,
                          uint8_t *codes, float *scales, cudaStream_t stream,
                          const int32_t *rowsUsed = nullptr);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_GROUPEDGEMMFP8_H
