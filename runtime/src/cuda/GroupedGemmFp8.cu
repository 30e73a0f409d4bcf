//===- GroupedGemmFp8.cu - grouped gate/up on FP8 tensor cores ------------===//
//
// A block: a [128 x 128] tile of y, two warpgroups of 64 rows each. A stage
// holds one 128-wide block of k (one block of scales): x's, gate's and
// up's [128 x 128] e4m3 tiles in the 128-byte swizzle, brought by TMA
// through a ring of four stages (thread 0 keeps three ahead). Each
// warpgroup multiplies x by gate (wgmma m64n128k32, four steps) into a
// scratch accumulator, waits for it, and adds it times its rows' x scales
// and the tile's gate scale into the gate sums; then the same for up. The
// other warpgroup's products run while one adds.
//
//===----------------------------------------------------------------------===//
#include "cuda/GroupedGemmFp8.h"

#include "cuda/BulkTensorCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/GroupOfRow.cuh"
#include "cuda/Silu.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/TensorMaps.h"
#include "cuda/Wgmma.cuh"

namespace melt::rt::cuda {
namespace {

constexpr int kTile = 128, kThreads = 256, kStages = 4;
constexpr int kOperandBytes = kTile * kTile; // a [128 x 128] e4m3 tile
constexpr int kStageBytes = 3 * kOperandBytes;
constexpr size_t kBarriersAt = size_t(kStages) * kStageBytes;
constexpr size_t kSharedBytes =
    kBarriersAt + kStages * sizeof(uint64_t) + kSwizzleAtomBytes;

/// sum += part times the scale of its row: rows g (d[4j], d[4j + 1]) take
/// `lo`, rows g + 8 (d[4j + 2], d[4j + 3]) `hi` (Wgmma.cuh's fragments).
__device__ __forceinline__ void
addScaled(float (&sum)[64], const float (&part)[64], float lo, float hi) {
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    sum[4 * j] += part[4 * j] * lo;
    sum[4 * j + 1] += part[4 * j + 1] * lo;
    sum[4 * j + 2] += part[4 * j + 2] * hi;
    sum[4 * j + 3] += part[4 * j + 3] * hi;
  }
}

__global__ void __launch_bounds__(kThreads, 1)
    groupedFp8PairKernel(GroupedFp8PairArgs a,
                         const __grid_constant__ CUtensorMap xMap,
                         const __grid_constant__ CUtensorMap gateMap,
                         const __grid_constant__ CUtensorMap upMap) {
  awaitPriorKernels();
  const int row0 = int(blockIdx.y) * kTile;
  if (row0 >= a.starts[a.groups]) // past the last group: nothing to do
    return;
  const int expert = groupOfRow(a.starts, a.groups, row0);
  const int n0 = int(blockIdx.x) * kTile;
  const int wRow0 = expert * a.n + n0;
  const int kBlocks = a.k / kTile;
  // The scales of this tile's 128 columns, one per block of k.
  const size_t scalesAt =
      (size_t(expert) * (a.n / kTile) + n0 / kTile) * kBlocks;

  extern __shared__ uint8_t sharedRaw[];
  uint8_t *shared = sharedRaw + (kSwizzleAtomBytes -
                                 sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                    kSwizzleAtomBytes;
  uint64_t *full = reinterpret_cast<uint64_t *>(shared + kBarriersAt);
  // A stage's tiles: x, then gate (0) and up (1).
  auto xTile = [&](int stage) { return shared + stage * kStageBytes; };
  auto wTile = [&](int stage, int which) {
    return xTile(stage) + (1 + which) * kOperandBytes;
  };
  if (threadIdx.x == 0)
    for (int stage = 0; stage < kStages; ++stage)
      initLoadBarrier(&full[stage]);
  __syncthreads();
  // Block kb of k into its stage (thread 0).
  auto load = [&](int kb) {
    const int stage = kb % kStages;
    expectBytes(&full[stage], kStageBytes);
    loadTile2d(xTile(stage), &xMap, kb * kTile, row0, &full[stage]);
    loadTile2d(wTile(stage, 0), &gateMap, kb * kTile, wRow0, &full[stage]);
    loadTile2d(wTile(stage, 1), &upMap, kb * kTile, wRow0, &full[stage]);
  };
  if (threadIdx.x == 0)
    for (int kb = 0; kb < min(kStages - 1, kBlocks); ++kb)
      load(kb);

  // This thread's rows: 16 warp + g and + 8 of its warpgroup's 64.
  const int group = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int rowLo = row0 + group * 64 + 16 * warp + g;
  float sums[2][64], part[64];
#pragma unroll
  for (int which = 0; which < 2; ++which)
#pragma unroll
    for (int i = 0; i < 64; ++i)
      sums[which][i] = 0.f;
  for (int kb = 0; kb < kBlocks; ++kb) {
    const int stage = kb % kStages;
    const float *xScales = a.xScales + size_t(kb) * a.capacity;
    const float xLo = xScales[rowLo], xHi = xScales[rowLo + 8];
    const float wScale[2] = {a.gateScales[scalesAt + kb],
                             a.upScales[scalesAt + kb]};
    awaitBarrier(&full[stage], (kb / kStages) % 2);
    const uint64_t x =
        kMajorDescriptor(xTile(stage) + group * 64 * kSwizzleRowBytes);
#pragma unroll
    for (int which = 0; which < 2; ++which) {
      const uint64_t w = kMajorDescriptor(wTile(stage, which));
      wgmmaFence(); // part was read by the last addScaled
#pragma unroll
      for (int step = 0; step < kTile / 32; ++step)
        wgmma64x128Fp8(part, advanced(x, step * 32), advanced(w, step * 32),
                       step > 0);
      wgmmaCommit();
      wgmmaWait<0>();
      addScaled(sums[which], part, xLo * wScale[which], xHi * wScale[which]);
    }
    // Both warpgroups done with the stage: the one block kb + 3 goes to.
    __syncthreads();
    if (threadIdx.x == 0 && kb + kStages - 1 < kBlocks)
      load(kb + kStages - 1);
  }

  // SiLU(gate) * up, each rounded to BF16 first (GroupedGemm.h's pair).
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const size_t at = size_t(rowLo + 8 * half) * a.n + n0 + 2 * t;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int i = 4 * j + 2 * half;
      *reinterpret_cast<uint32_t *>(a.y + at + 8 * j) =
          packBf16(siluTimesOfBf16(sums[0][i], sums[1][i]),
                   siluTimesOfBf16(sums[0][i + 1], sums[1][i + 1]));
    }
  }
}

/// A block per row: its codes 16 bytes a thread, then its scales.
__global__ void gatherFp8RowsKernel(const uint8_t *x, const float *xScales,
                                    int tokens, const int32_t *tokenOfRow,
                                    int count, int dim, uint8_t *codes,
                                    float *scales) {
  awaitPriorKernels();
  const int row = int(blockIdx.x), token = tokenOfRow[row];
  const uint4 *from = reinterpret_cast<const uint4 *>(x + size_t(token) * dim);
  uint4 *to = reinterpret_cast<uint4 *>(codes + size_t(row) * dim);
  for (int i = threadIdx.x; i < dim / 16; i += blockDim.x)
    to[i] = from[i];
  for (int b = threadIdx.x; b < dim / kTile; b += blockDim.x)
    scales[size_t(b) * count + row] = xScales[size_t(b) * tokens + token];
}

bool aligned16(const void *p) {
  return p && reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

} // namespace

bool groupedFp8PairFits(const GroupedFp8PairArgs &a) {
  return a.groups > 0 && a.n > 0 && a.n % kTile == 0 && a.k > 0 &&
         a.k % kTile == 0 && a.capacity > 0 && a.capacity % kTile == 0 &&
         aligned16(a.x) && aligned16(a.gate) && aligned16(a.up) &&
         aligned16(a.y) && a.xScales && a.gateScales && a.upScales && a.starts;
}

cudaError_t groupedGemmFp8Pair(const GroupedFp8PairArgs &a,
                               cudaStream_t stream) {
  if (!groupedFp8PairFits(a))
    return cudaErrorInvalidValue;
  alignas(64) CUtensorMap xMap{}, gateMap{}, upMap{};
  const uint64_t wRows = uint64_t(a.groups) * a.n;
  if (!swizzledByteMap(xMap, a.x, uint64_t(a.capacity), uint64_t(a.k),
                       uint64_t(a.k), kTile) ||
      !swizzledByteMap(gateMap, a.gate, wRows, uint64_t(a.k), uint64_t(a.k),
                       kTile) ||
      !swizzledByteMap(upMap, a.up, wRows, uint64_t(a.k), uint64_t(a.k), kTile))
    return cudaErrorNotSupported;
  cudaError_t error = cudaFuncSetAttribute(
      groupedFp8PairKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
      int(kSharedBytes));
  if (error != cudaSuccess)
    return error;
  const dim3 grid(a.n / kTile, a.capacity / kTile);
  error = launchOverlapped(groupedFp8PairKernel, grid, kThreads, kSharedBytes,
                           stream, a, xMap, gateMap, upMap);
  return error != cudaSuccess ? error : cudaGetLastError();
}

cudaError_t gatherFp8Rows(const uint8_t *x, const float *xScales, int tokens,
                          const int32_t *tokenOfRow, int count, int dim,
                          uint8_t *codes, float *scales, cudaStream_t stream) {
  if (count <= 0)
    return cudaSuccess;
  if (dim % kTile != 0 || !aligned16(x) || !aligned16(codes))
    return cudaErrorInvalidValue;
  const cudaError_t error =
      launchOverlapped(gatherFp8RowsKernel, count, 128, 0, stream, x, xScales,
                       tokens, tokenOfRow, count, dim, codes, scales);
  return error != cudaSuccess ? error : cudaGetLastError();
}

} // namespace melt::rt::cuda
