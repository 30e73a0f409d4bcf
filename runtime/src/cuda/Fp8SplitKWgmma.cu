//===- Fp8SplitKWgmma.cu - FP8 GEMM of up to 64 tokens on wgmma -----------===//
//
// y[M, N] = x[M, K] W[N, K]^T for M <= 64 (a decode step of a batch), FP8
// e4m3 operands with DeepSeek-V3 block scales. At these M the product only
// streams W; what matters is how much of W is in flight. cuBLASLt's
// block-scaled kernels read the narrow weights (N of about 2K) at a fifth
// to two thirds of the copy bandwidth here, and Fp8SmallM.cu's mma.sync
// kernel, which widens FP8 to FP16 (sm_90 has no FP8 mma.sync), loses to
// them from 16 tokens on.
//
// Here W is wgmma's 64-row operand and the tokens its N (8, 16, 32 or 64;
// x's rows past M read as zeros): a block takes one 128-row tile of W (one
// row of its 128 x 128 scale blocks) over a range of K, each of its two
// warpgroups one 64-row half; both operands K-major FP8 in the 128-byte
// swizzle,
// brought by TMA into a ring of stages that one thread refills. The
// weights of the first stages are asked for before the kernel ahead ends
// (they are constant: DependentLaunch.cuh); x after it. Per 128-wide K
// block the warpgroup sums four k32 steps into a temporary, then adds it
// times the block's weight scale and each token's input scale (FP32
// promotion per 128 values, as DeepSeek-V3 does).
//
// K is split over the blocks of a cluster (up to 8), so that a narrow W
// still fills the GPU with loads. Each block leaves its partial [tokens x
// 128] sums in its own shared memory; after a cluster barrier, block r adds
// slice r of the tile from every block's shared memory in rank order
// (distributed shared memory: no scratch, no counters, no second launch,
// the same bits every run) and writes it as BF16.
//
// Blocks share an SM two ways, or three or four up to 32 tokens (each
// ring then a third or a quarter of its shared memory), as the plan
// (fp8SplitKWgmmaPlan) chooses: with more 128-row tiles of W than SMs,
// the number that evens out the K blocks the SMs stream.
//
//===----------------------------------------------------------------------===//
#include "cuda/Fp8SplitKWgmma.h"

#include "EnvSwitch.h"

#include "cuda/BulkTensorCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/OperandAccess.cuh"
#include "cuda/TensorMaps.h"
#include "cuda/Wgmma.cuh"

#include <cooperative_groups.h>

#include <algorithm>
#include <cstdint>

namespace melt::rt::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kTileRows = 128; // W rows a block: one row of scale blocks
constexpr int kKBlock = 128;
constexpr int kThreads = 256; // two warpgroups, one a 64-row half of W
constexpr int kWeightTileBytes = kTileRows * kKBlock;
constexpr int kMaxSplits = 8; // the portable cluster size
/// Shared memory a block where kPerSm blocks share an SM (228 KB, 1 KB of
/// it reserved per block): one block's ring drains while another's fills.
template <int kPerSm>
constexpr int kSharedPerBlock = 228 * 1024 / kPerSm - 1024;

/// A stage of the ring: W's [128 x 128] tile, then x's [kTokens x 128].
template <int kTokens>
constexpr int kStageBytes = kWeightTileBytes + (kTokens * kKBlock);

/// A block's shared memory for kTokens tokens, kPerSm blocks an SM: the
/// ring of stages (W's [128 x 128] tile, then x's [kTokens x 128]), reused
/// for the partial sums once every stage is read, then the stages'
/// barriers.
template <int kTokens, int kPerSm> struct Layout {
  static constexpr int budget = kSharedPerBlock<kPerSm>;
  static constexpr int stageBytes = kStageBytes<kTokens>;
  static constexpr int stages =
      std::min(6, (budget - kSwizzleAtomBytes - 64) / stageBytes);
  // Rows of the partial sums 132 floats apart: a warp's fragment stores
  // (8 rows, 4 token pairs) fall in 32 different banks.
  static constexpr int partialStride = kTileRows + 4;
  static constexpr int partialBytes = kTokens * partialStride * 4;
  static constexpr int barriersAt = std::max(stages * stageBytes, partialBytes);
  static constexpr size_t sharedBytes =
      kSwizzleAtomBytes + barriersAt + stages * sizeof(uint64_t);
  static_assert(stageBytes % kSwizzleAtomBytes == 0, "stage alignment");
  static_assert(stages >= 2 && sharedBytes <= budget, "shared memory");
};

/// Asks for stage `stage`'s K block `kb`: its W tile (`weights`) and/or its
/// x tile (`inputs`); the barrier expects both, asked for with the first.
template <int kTokens>
__device__ __forceinline__ void
loadStage(uint8_t *stage, uint64_t *full, const CUtensorMap &wMap,
          const CUtensorMap &xMap, int kb, int n0, bool weights, bool inputs) {
  if (weights) {
    expectBytes(full, kStageBytes<kTokens>);
    loadTile2d(stage, &wMap, kb * kKBlock, n0, full);
  }
  if (inputs)
    loadTile2d(stage + kWeightTileBytes, &xMap, kb * kKBlock, 0, full);
}

/// Grid (splits, row tiles), clusters of (splits, 1, 1), kPerSm blocks
/// an SM.
template <int kTokens, int kPerSm>
__global__ void __launch_bounds__(kThreads, kPerSm)
    fp8SplitKKernel(const __grid_constant__ CUtensorMap wMap,
                    const __grid_constant__ CUtensorMap xMap,
                    const float *xScales, const float *wScales,
                    __nv_bfloat16 *y, int m, int n, int k) {
  using L = Layout<kTokens, kPerSm>;
  constexpr int kRegisters = kTokens / 2; // accumulators of an m64 product
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ __align__(16) unsigned char sharedRaw[];
  // The swizzle needs 1024-byte aligned tiles. The offset is the same in
  // every block, so a peer's partial sums sit where this block's do.
  uint8_t *base = sharedRaw + (kSwizzleAtomBytes -
                               sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                  kSwizzleAtomBytes;
  auto *full = reinterpret_cast<uint64_t *>(base + L::barriersAt);
  const int rank = blockIdx.x, splits = gridDim.x, tile = blockIdx.y;
  const int n0 = tile * kTileRows, kBlocks = k / kKBlock;
  const int perSplit = (kBlocks + splits - 1) / splits;
  const int kb0 = min(kBlocks, rank * perSplit);
  const int count = min(kBlocks, kb0 + perSplit) - kb0;
  // This warpgroup's half of the tile, and this thread's place in it.
  const int half = threadIdx.x / 128, warp = threadIdx.x % 128 / 32;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  if (threadIdx.x == 0)
    for (int s = 0; s < L::stages; ++s)
      initLoadBarrier(&full[s]);
  __syncthreads();
  const int ahead = min(L::stages, count);
  if (threadIdx.x == 0)
    for (int s = 0; s < ahead; ++s)
      loadStage<kTokens>(base + s * L::stageBytes, &full[s], wMap, xMap,
                         kb0 + s, n0, true, false);
  awaitPriorKernels();
  if (threadIdx.x == 0)
    for (int s = 0; s < ahead; ++s)
      loadStage<kTokens>(base + s * L::stageBytes, &full[s], wMap, xMap,
                         kb0 + s, n0, false, true);

  // Accumulator d[4 j + r]: W row 64 half + 16 warp + g (+ 8 for r >= 2),
  // token 8 j + 2 t + (r & 1) (Wgmma.cuh's fragments).
  float sums[kRegisters] = {}, part[kRegisters];
  const float *wScaleRow = wScales + size_t(tile) * kBlocks;
  // The scales of K block kb: its weight block's, and each of this
  // thread's tokens' (0 past M). Loaded an iteration ahead, so that their
  // latency is not on the loop's path.
  float wScale = 0.f, xScale[kTokens / 8][2] = {};
  auto loadScales = [&](int kb, float &w, float(&x)[kTokens / 8][2]) {
    w = wScaleRow[kb];
#pragma unroll
    for (int j = 0; j < kTokens / 8; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int token = 8 * j + 2 * t + c;
        x[j][c] = token < m ? xScales[size_t(kb) * m + token] : 0.f;
      }
  };
  if (count > 0)
    loadScales(kb0, wScale, xScale);
  for (int i = 0; i < count; ++i) {
    const int s = i % L::stages, kb = kb0 + i;
    uint8_t *stage = base + s * L::stageBytes;
    float nextW = 0.f, nextX[kTokens / 8][2] = {};
    if (i + 1 < count)
      loadScales(kb + 1, nextW, nextX);
    awaitBarrier(&full[s], (i / L::stages) & 1);
    const uint64_t x = kMajorDescriptor(stage + kWeightTileBytes);
    const uint64_t a = kMajorDescriptor(stage + half * 64 * kKBlock);
    wgmmaFence(); // part was read by the last iteration's adds
#pragma unroll
    for (int step = 0; step < kKBlock / 32; ++step)
      WgmmaFp8<kTokens>::run(part, advanced(a, step * 32),
                             advanced(x, step * 32), step > 0);
    wgmmaCommit();
    wgmmaWait<0>();
    __syncthreads(); // every warp's products have read the stage
    if (threadIdx.x == 0 && i + L::stages < count)
      loadStage<kTokens>(stage, &full[s], wMap, xMap, kb + L::stages, n0, true,
                         true);
#pragma unroll
    for (int j = 0; j < kTokens / 8; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float scale = xScale[j][c] * wScale;
        sums[4 * j + c] += part[4 * j + c] * scale;
        sums[4 * j + 2 + c] += part[4 * j + 2 + c] * scale;
      }
    wScale = nextW;
#pragma unroll
    for (int j = 0; j < kTokens / 8; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c)
        xScale[j][c] = nextX[j][c];
  }

  // The partial sums, [tokens][rows], over the stages (all read: the
  // loop's last barrier).
  auto *partial = reinterpret_cast<float *>(base);
#pragma unroll
  for (int j = 0; j < kTokens / 8; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = 64 * half + 16 * warp + g + (r >= 2 ? 8 : 0);
      const int token = 8 * j + 2 * t + (r & 1);
      partial[token * L::partialStride + row] = sums[4 * j + r];
    }
  cluster.sync();
  // This block's slice: fours of rows of the tile's tokens, each the sum
  // of every block's partial in rank order.
  const int fours = m * (kTileRows / 4);
  for (int u = rank * kThreads + int(threadIdx.x); u < fours;
       u += splits * kThreads) {
    const int token = u / (kTileRows / 4), row = (u % (kTileRows / 4)) * 4;
    if (n0 + row >= n)
      continue;
    const int at = token * L::partialStride + row;
    // Every block's four asked for before any is added: one round trip
    // over the cluster, not eight.
    float4 v[kMaxSplits];
#pragma unroll
    for (int c = 0; c < kMaxSplits; ++c)
      if (c < splits)
        v[c] = *reinterpret_cast<const float4 *>(
            cluster.map_shared_rank(partial + at, static_cast<unsigned>(c)));
    float4 total = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int c = 0; c < kMaxSplits; ++c)
      if (c < splits)
        total.x += v[c].x, total.y += v[c].y, total.z += v[c].z,
            total.w += v[c].w;
    store4(Result{y, true}, size_t(token) * n + n0 + row, total);
  }
  cluster.sync(); // no block leaves while its partial sums are read
}

/// The blocks an SM a kernel of kTokens tokens may share it with: 64
/// tokens' accumulators take more registers than three blocks leave.
constexpr int maxBlocksPerSm(int tokens) { return tokens > 32 ? 2 : 4; }

template <int kTokens, int kPerSm>
cudaError_t launch(const __nv_fp8_e4m3 *x, const float *xScales,
                   const __nv_fp8_e4m3 *w, const float *wScales,
                   __nv_bfloat16 *y, int m, int n, int k, int splits,
                   cudaStream_t stream) {
  using L = Layout<kTokens, kPerSm>;
  // Nothing launched where the driver makes no tensor maps or the GPU
  // gives no such shared memory: cudaErrorNotSupported, for the caller to
  // take another kernel.
  CUtensorMap wMap, xMap;
  if (!swizzledByteMap(wMap, w, uint64_t(n), uint64_t(k), uint64_t(k),
                       kTileRows) ||
      !swizzledByteMap(xMap, x, uint64_t(m), uint64_t(k), uint64_t(k), kTokens))
    return cudaErrorNotSupported;
  static const cudaError_t configured = [] {
    const cudaError_t e = cudaFuncSetAttribute(
        fp8SplitKKernel<kTokens, kPerSm>,
        cudaFuncAttributeMaxDynamicSharedMemorySize, int(L::sharedBytes));
    if (e != cudaSuccess)
      (void)cudaGetLastError(); // not a sticky error: cleared
    return e;
  }();
  if (configured != cudaSuccess)
    return cudaErrorNotSupported;
  return launchOverlappedInClusters(
      fp8SplitKKernel<kTokens, kPerSm>,
      dim3(unsigned(splits), unsigned((n + kTileRows - 1) / kTileRows)),
      dim3(kThreads), L::sharedBytes, stream, unsigned(splits), wMap, xMap,
      xScales, wScales, y, m, n, k);
}

template <int kTokens>
cudaError_t launchWith(const __nv_fp8_e4m3 *x, const float *xScales,
                       const __nv_fp8_e4m3 *w, const float *wScales,
                       __nv_bfloat16 *y, int m, int n, int k,
                       Fp8SplitKPlan plan, cudaStream_t stream) {
  switch (plan.blocksPerSm) {
  case 2:
    return launch<kTokens, 2>(x, xScales, w, wScales, y, m, n, k, plan.splits,
                              stream);
  case 3:
    if constexpr (maxBlocksPerSm(kTokens) >= 3)
      return launch<kTokens, 3>(x, xScales, w, wScales, y, m, n, k, plan.splits,
                                stream);
    break;
  case 4:
    if constexpr (maxBlocksPerSm(kTokens) >= 4)
      return launch<kTokens, 4>(x, xScales, w, wScales, y, m, n, k, plan.splits,
                                stream);
    break;
  }
  return cudaErrorInvalidValue;
}

} // namespace

Fp8SplitKPlan fp8SplitKWgmmaPlan(int m, int n, int k, int smCount) {
  const int tiles = (n + kTileRows - 1) / kTileRows, kBlocks = k / kKBlock;
  const int sms = std::max(1, smCount);
  const int mostSplits = std::max(1, std::min(kMaxSplits, kBlocks));
  // As many K ranges as fill two blocks an SM with the tiles, at most 8
  // and K's blocks: where there are fewer tiles than SMs, what the kernel
  // has taken since session 28.
  const Fp8SplitKPlan twoAnSm{std::clamp(sms * 2 / tiles, 1, mostSplits), 2};
  // (MELT_CUDA_FP8_SPLIT_K_BALANCED=0: that plan at every shape.)
  static const bool balanced =
      envSwitch("MELT_CUDA_FP8_SPLIT_K_BALANCED", true);
  if (!balanced || tiles <= sms)
    return twoAnSm;
  // More tiles than SMs left one range a tile, some SMs with two blocks
  // and the rest with one: DeepSeek-V3's dense gate/up (144 tiles) put two
  // blocks of 56 K blocks on 12 SMs and one on the other 120. Here every
  // block stays resident at once (a block in a later wave waits a memory
  // round trip for its first loads:
  // bench/results/fp8_split_k_wgmma_s28_h200.txt) and the busiest SM streams
  // the fewest K blocks (blocks on it times the K blocks of each; ties to fewer
  // blocks an SM, deeper rings): three ranges four blocks an SM put at most
  // four of 19 there, and the product ran at 3.6-3.9 TB/s, not 2.6
  // (bench/results/fp8_split_k_balanced_s43_h200.txt). With fewer tiles than
  // SMs the same arithmetic picked 7 ranges three blocks an SM for 56 tiles,
  // and 5 or 7 ranges for 17 or 24: 5-25% slower there, so that plan stays.
  Fp8SplitKPlan best{1, 2};
  long bestCost = -1;
  int bestBlocks = 0;
  for (int perSm = 2; perSm <= maxBlocksPerSm(m); ++perSm)
    for (int splits = 1; splits <= mostSplits; ++splits) {
      const int blocks = tiles * splits;
      if (blocks > sms * perSm)
        break;
      const long cost =
          long((blocks + sms - 1) / sms) * ((kBlocks + splits - 1) / splits);
      if (bestCost < 0 || cost < bestCost ||
          (cost == bestCost && perSm == best.blocksPerSm &&
           blocks > bestBlocks)) {
        best = {splits, perSm};
        bestCost = cost;
        bestBlocks = blocks;
      }
    }
  return best;
}

bool fp8SplitKWgmmaTakes(const void *x, const void *w, const void *y, int m,
                         int n, int k) {
  return m >= 1 && m <= kFp8SplitKWgmmaMax && n >= 16 && n % 16 == 0 &&
         k >= kKBlock && k % kKBlock == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(y) % 8 == 0;
}

cudaError_t fp8SplitKWgmma(const __nv_fp8_e4m3 *x, const float *xScales,
                           const __nv_fp8_e4m3 *w, const float *wScales,
                           __nv_bfloat16 *y, int m, int n, int k, int smCount,
                           cudaStream_t stream, int splits, int blocksPerSm) {
  if (!fp8SplitKWgmmaTakes(x, w, y, m, n, k) || splits < 0 ||
      splits > kMaxSplits || blocksPerSm < 0 || blocksPerSm == 1 ||
      blocksPerSm > maxBlocksPerSm(m))
    return cudaErrorInvalidValue;
  const Fp8SplitKPlan plan =
      splits == 0 ? fp8SplitKWgmmaPlan(m, n, k, smCount)
                  : Fp8SplitKPlan{splits, blocksPerSm > 0 ? blocksPerSm : 2};
  if (m <= 8)
    return launchWith<8>(x, xScales, w, wScales, y, m, n, k, plan, stream);
  if (m <= 16)
    return launchWith<16>(x, xScales, w, wScales, y, m, n, k, plan, stream);
  if (m <= 32)
    return launchWith<32>(x, xScales, w, wScales, y, m, n, k, plan, stream);
  return launchWith<64>(x, xScales, w, wScales, y, m, n, k, plan, stream);
}

} // namespace melt::rt::cuda
