//===- GroupedGemm.cu - one launch for every expert's product -------------===//
//
// A block: a [128 x 128] tile of y, two warpgroups of 64 rows each (wgmma
// m64n128k16, four k16 steps per 64-wide block of k). Thread 0 keeps three
// blocks of k ahead in a ring of four stages, each stage's x and w tiles
// ([128 x 64] BF16 each, in the 128-byte swizzle) brought by TMA and
// counted on the stage's mbarrier. A stage is refilled once both
// warpgroups' products of it are done (a wgmma wait for all but the
// latest group, then a barrier).
//
//===----------------------------------------------------------------------===//
#include "cuda/GroupedGemm.h"

#include "cuda/BulkTensorCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/TensorMaps.h"
#include "cuda/Wgmma.cuh"

namespace melt::rt::cuda {
namespace {

constexpr int kTileRows = kGroupedGemmRows, kTileColumns = 128;
constexpr int kBlockK = 64, kStages = 4, kThreads = 256;
constexpr int kOperandBytes = kTileRows * kBlockK * 2; // x's or w's tile
constexpr int kStageBytes = 2 * kOperandBytes;
constexpr size_t kBarriersAt = size_t(kStages) * kStageBytes;
constexpr size_t kSharedBytes =
    kBarriersAt + kStages * sizeof(uint64_t) + kSwizzleAtomBytes;

__global__ void __launch_bounds__(kThreads, 1)
    groupedGemmKernel(GroupedGemmArgs a,
                      const __grid_constant__ CUtensorMap xMap,
                      const __grid_constant__ CUtensorMap wMap) {
  awaitPriorKernels();
  const int row0 = int(blockIdx.y) * kTileRows;
  if (row0 >= a.starts[a.groups]) // past the last group: nothing to do
    return;
  // The group whose rows hold row0: the last with starts[e] <= row0 (the
  // groups without rows share their start with the next).
  int lo = 0, hi = a.groups - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (a.starts[mid] <= row0)
      lo = mid;
    else
      hi = mid - 1;
  }
  const int n0 = int(blockIdx.x) * kTileColumns;
  const int wRow0 = lo * a.n + n0;

  extern __shared__ uint8_t sharedRaw[];
  uint8_t *shared = sharedRaw + (kSwizzleAtomBytes -
                                 sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                    kSwizzleAtomBytes;
  uint64_t *full = reinterpret_cast<uint64_t *>(shared + kBarriersAt);
  auto xTile = [&](int stage) { return shared + stage * kStageBytes; };
  auto wTile = [&](int stage) { return xTile(stage) + kOperandBytes; };
  if (threadIdx.x == 0)
    for (int stage = 0; stage < kStages; ++stage)
      initLoadBarrier(&full[stage]);
  __syncthreads();

  const int kBlocks = a.k / kBlockK;
  // Block kb of k into its stage (thread 0).
  auto load = [&](int kb) {
    const int stage = kb % kStages;
    expectBytes(&full[stage], kStageBytes);
    loadTile2d(xTile(stage), &xMap, kb * kBlockK, row0, &full[stage]);
    loadTile2d(wTile(stage), &wMap, kb * kBlockK, wRow0, &full[stage]);
  };
  if (threadIdx.x == 0)
    for (int kb = 0; kb < min(kStages - 1, kBlocks); ++kb)
      load(kb);

  const int group = threadIdx.x / 128;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i)
    acc[i] = 0.f;
  for (int kb = 0; kb < kBlocks; ++kb) {
    const int stage = kb % kStages;
    awaitBarrier(&full[stage], (kb / kStages) % 2);
    const uint64_t x =
        kMajorDescriptor(xTile(stage) + group * 64 * kSwizzleRowBytes);
    const uint64_t w = kMajorDescriptor(wTile(stage));
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < kBlockK / 16; ++step)
      wgmma64x128(acc, advanced(x, step * 32), advanced(w, step * 32),
                  kb > 0 || step > 0);
    wgmmaCommit();
    // The products of block kb - 1 done in both warpgroups: its stage,
    // the one block kb + 3 goes to, may be refilled.
    wgmmaWait<1>();
    __syncthreads();
    if (threadIdx.x == 0 && kb + kStages - 1 < kBlocks)
      load(kb + kStages - 1);
  }
  wgmmaWait<0>();

  // Rows 16 warp + g and + 8 of this warpgroup's 64; columns 8 j + 2 t, + 1.
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const size_t row = size_t(row0 + group * 64 + 16 * warp + g + 8 * half);
    __nv_bfloat16 *out = a.y + row * a.n + n0 + 2 * t;
#pragma unroll
    for (int j = 0; j < 16; ++j)
      *reinterpret_cast<uint32_t *>(out + 8 * j) =
          packBf16(acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]);
  }
}

} // namespace

bool groupedGemmFits(const GroupedGemmArgs &a) {
  return a.groups > 0 && a.n > 0 && a.n % kTileColumns == 0 && a.k > 0 &&
         a.k % kBlockK == 0 && a.capacity > 0 && a.capacity % kTileRows == 0 &&
         a.x && a.w && a.y && a.starts &&
         reinterpret_cast<uintptr_t>(a.x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.w) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.y) % 16 == 0;
}

cudaError_t groupedGemmBf16(const GroupedGemmArgs &a, cudaStream_t stream) {
  if (!groupedGemmFits(a))
    return cudaErrorInvalidValue;
  alignas(64) CUtensorMap xMap{}, wMap{};
  if (!swizzledBf16Map(xMap, a.x, uint64_t(a.capacity), uint64_t(a.k),
                       uint64_t(a.k), kTileRows) ||
      !swizzledBf16Map(wMap, a.w, uint64_t(a.groups) * a.n, uint64_t(a.k),
                       uint64_t(a.k), kTileColumns))
    return cudaErrorNotSupported;
  cudaError_t error = cudaFuncSetAttribute(
      groupedGemmKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
      int(kSharedBytes));
  if (error != cudaSuccess)
    return error;
  const dim3 grid(a.n / kTileColumns, a.capacity / kTileRows);
  error = launchOverlapped(groupedGemmKernel, grid, kThreads, kSharedBytes,
                           stream, a, xMap, wMap);
  return error != cudaSuccess ? error : cudaGetLastError();
}

} // namespace melt::rt::cuda
