//===- GroupedGemm.h - one launch for every expert's product ----*- C++ -*-===//
//
// A prefill's routed experts multiply each expert's rows by that expert's
// weights. With cuBLASLt that is one GEMM per expert, whose row counts the
// host must know: the router's choices are read back each MoE layer, and
// the GPU waits while the host groups them and launches 2-3 products per
// expert. Here the groups are given on the device (where each expert's
// rows begin in a gathered operand, in multiples of 128), and one launch
// covers every (expert, row tile, column tile): a block finds its expert
// from the group starts, and blocks past the last group's end return.
//
// BF16 operands, FP32 accumulation on Hopper's warpgroup MMA (Wgmma.cuh),
// both operands brought in by TMA through a ring of shared
// memory (BulkTensorCopy.cuh, TensorMaps.h); BF16 or F32 output. Weights
// in FP8 with 128x128 block scales are widened to BF16 in shared memory
// as they arrive (e4m3 value times its block's scale, rounded: the values
// widenFp8Blocks gives), so the products are BF16 ones either way.
//
// The device runs it for a prefill's experts (MELT_CUDA_DEVICE_GROUPING,
// on by default since it was run on the H200; =0 groups on the host).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_GROUPEDGEMM_H
#define MELT_RUNTIME_CUDA_GROUPEDGEMM_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace melt::rt::cuda {

/// Rows of a tile: each group's rows start at a multiple of it.
constexpr int kGroupedGemmRows = 128;

struct GroupedGemmArgs {
  /// [capacity, k] row-major: group e's rows are [starts[e], starts[e + 1]).
  const __nv_bfloat16 *x = nullptr;
  /// [groups, n, k] row-major: group e's matrix is w + e * n * k. BF16, or
  /// FP8 e4m3 codes where wScales is given.
  const void *w = nullptr;
  /// FP8 weights' scales, [groups, n / 128, ceil(k / 128)] row-major.
  const float *wScales = nullptr;
  /// A gate/up pair: where w2 (the up weights, laid out and typed as w,
  /// with w2Scales where w is FP8) is given, y (BF16) = SiLU(x w^T) *
  /// (x w2^T), each product rounded to BF16 first, as the separate
  /// products and the elementwise SiLU-mul give it.
  const void *w2 = nullptr;
  const float *w2Scales = nullptr;
  /// [capacity, n] row-major: y[r] = x[r] w[e]^T for the rows of group e
  /// (a group's padding rows too, from whatever x holds there, unless
  /// `ends` is given; rows past starts[groups] are not written). In BF16 (y) or
  /// F32 (yF32): one of the two is given.
  __nv_bfloat16 *y = nullptr;
  float *yF32 = nullptr;
  /// On the device: groups + 1 non-decreasing multiples of 128, the first
  /// 0, the last at most `capacity`.
  const int32_t *starts = nullptr;
  /// Where given, on the device, [groups]: where each group's rows of
  /// interest end (ExpertGrouping.h's `ends`). The rows from there to the
  /// next start are padding: they are not written, and a warpgroup whose
  /// 64 rows are all padding skips its products (a group's last tile is
  /// often half padding).
  const int32_t *ends = nullptr;
  int groups = 0, capacity = 0, n = 0, k = 0;
  /// BF16 rows written 16 bytes a lane, whole sectors a store
  /// (FragmentStores.cuh); false: 4 bytes a lane, as the fragment holds
  /// them. The same values either way. BF16 weights only: with FP8 weights
  /// the rows go out 4 bytes a lane (see the kernel).
  bool wideStores = true;
};

/// Whether the kernel takes the shape: n a multiple of 128, k of 64,
/// capacity of 128, one output, the operands 16-byte aligned, and a pair's
/// weights alike (both FP8 or both BF16) with a BF16 output.
bool groupedGemmFits(const GroupedGemmArgs &args);

/// Launches the product on `stream` (no wait).
cudaError_t groupedGemmBf16(const GroupedGemmArgs &args, cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_GROUPEDGEMM_H
