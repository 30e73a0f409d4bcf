//===- MlaDecodeWarpgroups.cu - MLA decode on wgmma -----------------------===//
//
// A block: 64 heads of one sequence over one chunk of its latent cache, two
// warpgroups, one block per multiprocessor (its tiles take ~225 KB of
// shared memory). All operands of the products stay in shared memory in
// the 128-byte swizzle (Wgmma.cuh), as nine [64 x 64] blocks of the 576
// latent dims:
//  - the queries, [64 heads x 576], loaded once;
//  - two cache tiles, [64 tokens x 576]: one is used while cp.async
//    copies the next tile of the chunk into the other. A tile is both the
//    keys (K-major B of the scores) and, its first 512 dims, the values
//    (MN-major B of the weighted sum): the swizzled block reads either way;
//  - the softmax weights, [64 heads x 64 tokens] BF16.
// Per tile, warpgroup w scores tokens 32 w .. 32 w + 31 of every head
// (wgmma m64n32, 36 k16 steps over the 576 dims); the two exchange their
// row maxima, write their weights, and each adds weights x values into its
// 256 of the 512 output columns (wgmma m64n256, 4 steps over the tokens).
// The softmax runs in base 2 (the scale times log2 e); the statistics a
// chunk leaves are natural-log maxima, as the combine expects.
//
//===----------------------------------------------------------------------===//
#include "cuda/MlaDecodeWarpgroups.h"

#include "EnvSwitch.h"

#include "cuda/DependentLaunch.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/Wgmma.cuh"

#include <cfloat>

namespace melt::rt::cuda {
namespace {

constexpr int kThreads = 256;                        // two warpgroups
constexpr int kDimBlocks = kLatentEntry / 64;        // 9 blocks of 64 dims
constexpr int kValueBlocks = kLatentRank / 64;       // the first 8
constexpr int kBlockBytes = 64 * kSwizzleRowBytes;   // [64 rows x 64 dims]
constexpr int kTileBytes = kDimBlocks * kBlockBytes; // 72 KB
constexpr int kEntryChunks = kLatentEntry * 2 / 16;  // 16-byte chunks a row
constexpr int kGroupColumns = kLatentRank / 2;       // per warpgroup
constexpr int kGroupTokens = kWarpgroupTileTokens / 2;

/// Shared memory, from a 1024-byte aligned base: the queries, two tiles,
/// the weights, then each warpgroup's row maxima (or, at the end, sums).
constexpr size_t kQueriesAt = 0, kTilesAt = kTileBytes,
                 kWeightsAt = 3 * size_t(kTileBytes),
                 kRowStatsAt = kWeightsAt + kBlockBytes,
                 kSharedBytes = kRowStatsAt + 2 * 64 * sizeof(float) +
                                kSwizzleAtomBytes; // room to align

/// Copies 64 rows of 576 BF16 values (`rowStride` apart at `from`) into
/// the nine swizzled blocks at `to`; rows at or past `rows` become zeros.
__device__ __forceinline__ void copyRows(uint8_t *to, const __nv_bfloat16 *from,
                                         size_t rowStride, int rows) {
  for (int i = threadIdx.x; i < 64 * kEntryChunks; i += kThreads) {
    const int row = i / kEntryChunks, chunk = i % kEntryChunks;
    uint8_t *at =
        to + (chunk / 8) * kBlockBytes + swizzledOffset(row, chunk % 8);
    if (row < rows)
      copyAsync16(at, from + row * rowStride + chunk * 8);
    else
      *reinterpret_cast<uint4 *>(at) = make_uint4(0, 0, 0, 0);
  }
}

__global__ void __launch_bounds__(kThreads, 1)
    mlaDecodeWarpgroupChunks(MlaDecodeArgs args, int chunkTokens, int chunks,
                             float *partialSums, float2 *partialStats) {
  awaitPriorKernels();
  extern __shared__ uint8_t sharedRaw[];
  uint8_t *shared = sharedRaw + (kSwizzleAtomBytes -
                                 sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                    kSwizzleAtomBytes;
  uint8_t *queries = shared + kQueriesAt;
  uint8_t *weights = shared + kWeightsAt;
  float *rowStats = reinterpret_cast<float *>(shared + kRowStatsAt);

  const int headGroup = blockIdx.x, chunk = blockIdx.y, seq = blockIdx.z;
  const int group = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int length = args.lengths[seq];
  const int begin = chunk * chunkTokens;
  const int end = min(length, begin + chunkTokens);
  const int head0 = headGroup * kWarpgroupHeads;
  const int32_t *pages =
      args.blockTable + size_t(seq) * args.maxPagesPerSequence;
  auto copyTile = [&](uint8_t *to, int t0) {
    const __nv_bfloat16 *tile =
        args.cache + (size_t(pages[t0 / args.pageSize]) * args.pageSize +
                      t0 % args.pageSize) *
                         kLatentEntry;
    copyRows(to, tile, kLatentEntry, end - t0);
    commitCopies();
  };

  copyRows(queries,
           args.queries + (size_t(seq) * args.heads + head0) * kLatentEntry,
           kLatentEntry, 64);
  if (begin < end)
    copyTile(shared + kTilesAt, begin);
  else
    commitCopies();

  // This thread's rows (heads) in every fragment: r[0] = 16 warp + g and
  // r[1] = r[0] + 8; the tokens each sees (a prefill's causal rows).
  const int rows[2] = {16 * warp + g, 16 * warp + g + 8};
  int rowEnd[2] = {end, end};
  if (args.rowLengths) {
    const int perEntry = args.heads / args.rowHeads;
    for (int i = 0; i < 2; ++i)
      rowEnd[i] = min(end, args.rowLengths[size_t(seq) * perEntry +
                                           (head0 + rows[i]) / args.rowHeads]);
  }
  const float scale = args.scale * 1.4426950408889634f; // log2 e
  float runningMax[2] = {-FLT_MAX, -FLT_MAX};
  float runningSum[2] = {0.f, 0.f}; // this thread's tokens only
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i)
    acc[i] = 0.f;

  int buffer = 0;
  for (int t0 = begin; t0 < end; t0 += kWarpgroupTileTokens, buffer ^= 1) {
    // Tile t0 landed (every thread's copies), shown to the tensor cores;
    // every warpgroup is past the last tile's products, so the other
    // buffer may be refilled.
    awaitCopies<0>();
    fenceSharedForWgmma();
    __syncthreads();
    const uint8_t *tile = shared + kTilesAt + buffer * kTileBytes;
    if (t0 + kWarpgroupTileTokens < end)
      copyTile(shared + kTilesAt + (buffer ^ 1) * kTileBytes,
               t0 + kWarpgroupTileTokens);

    // Scores of this warpgroup's 32 tokens: [64 x 576] x [576 x 32].
    float score[16];
#pragma unroll
    for (int i = 0; i < 16; ++i)
      score[i] = 0.f;
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < kLatentEntry / 16; ++step) {
      const int block = step / 4, within = (step % 4) * 32;
      wgmma64x32(
          score, kMajorDescriptor(queries + block * kBlockBytes + within),
          kMajorDescriptor(tile + block * kBlockBytes +
                           group * kGroupTokens * kSwizzleRowBytes + within),
          true);
    }
    wgmmaCommit();
    wgmmaWait<0>();

    // Row maxima over both warpgroups' tokens.
    float tileMax[2] = {-FLT_MAX, -FLT_MAX};
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int r = (i / 2) % 2;
      const int token = t0 + group * kGroupTokens + 8 * (i / 4) + 2 * t + i % 2;
      score[i] = token < rowEnd[r] ? score[i] * scale : -FLT_MAX;
      tileMax[r] = fmaxf(tileMax[r], score[i]);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tileMax[r] =
          fmaxf(tileMax[r], __shfl_xor_sync(0xffffffff, tileMax[r], 1));
      tileMax[r] =
          fmaxf(tileMax[r], __shfl_xor_sync(0xffffffff, tileMax[r], 2));
      if (t == 0)
        rowStats[group * 64 + rows[r]] = tileMax[r];
    }
    __syncthreads();
    float factor[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float newMax = fmaxf(fmaxf(runningMax[r], tileMax[r]),
                                 rowStats[(group ^ 1) * 64 + rows[r]]);
      factor[r] = exp2f(runningMax[r] - newMax); // 1 while both are -FLT_MAX
      runningMax[r] = newMax;
      runningSum[r] *= factor[r];
    }

    // The BF16 weights (the sums count what the products use), into
    // columns 32 group .. of the [64 heads x 64 tokens] block.
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float p[2];
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const float s = score[4 * j + 2 * r + v];
          p[v] = s == -FLT_MAX ? 0.f : exp2f(s - runningMax[r]);
        }
        const uint32_t pair = packBf16(p[0], p[1]);
        const __nv_bfloat162 rounded =
            *reinterpret_cast<const __nv_bfloat162 *>(&pair);
        runningSum[r] += __low2float(rounded) + __high2float(rounded);
        *reinterpret_cast<uint32_t *>(
            weights + swizzledOffset(rows[r], group * 4 + j) + 4 * t) = pair;
      }
    // The running sums rescaled: skipped where no row of the warp's
    // maximum moved (most tiles once the maxima settle).
    if (__any_sync(0xffffffff, factor[0] != 1.f || factor[1] != 1.f)) {
#pragma unroll
      for (int i = 0; i < 128; ++i)
        acc[i] *= factor[(i / 2) % 2];
    }
    fenceSharedForWgmma();
    __syncthreads();

    // Weights x values: [64 x 64 tokens] x [64 tokens x this warpgroup's
    // 256 columns].
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < kWarpgroupTileTokens / 16; ++step)
      wgmma64x256Transposed(
          acc, kMajorDescriptor(weights + step * 32),
          mnMajorDescriptor(tile + group * (kValueBlocks / 2) * kBlockBytes +
                                step * 2 * kSwizzleAtomBytes,
                            kBlockBytes));
    wgmmaCommit();
    wgmmaWait<0>();
  }
  awaitCopies<0>();

  // This chunk's unnormalized sums, and its statistics: the row sums of
  // both warpgroups' tokens added.
  const size_t slot = (size_t(seq) * chunks + chunk) * args.heads + head0;
  float *out = partialSums + slot * kLatentRank + group * kGroupColumns;
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    const int column = 8 * j + 2 * t;
    *reinterpret_cast<float2 *>(out + rows[0] * kLatentRank + column) =
        make_float2(acc[4 * j], acc[4 * j + 1]);
    *reinterpret_cast<float2 *>(out + rows[1] * kLatentRank + column) =
        make_float2(acc[4 * j + 2], acc[4 * j + 3]);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    runningSum[r] += __shfl_xor_sync(0xffffffff, runningSum[r], 1);
    runningSum[r] += __shfl_xor_sync(0xffffffff, runningSum[r], 2);
  }
  __syncthreads(); // the row maxima's last readers are done
  if (group == 1 && t == 0)
    for (int r = 0; r < 2; ++r)
      rowStats[rows[r]] = runningSum[r];
  __syncthreads();
  if (group == 0 && t == 0)
    for (int r = 0; r < 2; ++r)
      partialStats[slot + rows[r]] = make_float2(
          runningMax[r] == -FLT_MAX ? -FLT_MAX
                                    : runningMax[r] * 0.6931471805599453f,
          runningSum[r] + rowStats[rows[r]]);
}

} // namespace

bool mlaWarpgroupsFit(const MlaDecodeArgs &args) {
  static const bool enabled = melt::rt::envSwitch("MELT_CUDA_MLA_WGMMA", true);
  return enabled && args.warpgroups && args.heads % kWarpgroupHeads == 0 &&
         args.pageSize % kWarpgroupTileTokens == 0;
}

size_t mlaWarpgroupSharedBytes() { return kSharedBytes; }

cudaError_t launchMlaWarpgroupChunks(const MlaDecodeArgs &args, int chunkTokens,
                                     int chunks, float *sums, float2 *stats,
                                     cudaStream_t stream) {
  if (chunkTokens % kWarpgroupTileTokens != 0 || !mlaWarpgroupsFit(args))
    return cudaErrorInvalidValue;
  cudaError_t error = cudaFuncSetAttribute(
      mlaDecodeWarpgroupChunks, cudaFuncAttributeMaxDynamicSharedMemorySize,
      int(kSharedBytes));
  if (error != cudaSuccess)
    return error;
  // The head groups of a chunk next to each other: they read the same
  // tiles, the second mostly from L2.
  const dim3 grid(args.heads / kWarpgroupHeads, chunks, args.batch);
  error =
      launchOverlapped(mlaDecodeWarpgroupChunks, grid, kThreads, kSharedBytes,
                       stream, args, chunkTokens, chunks, sums, stats);
  return error != cudaSuccess ? error : cudaGetLastError();
}

} // namespace melt::rt::cuda
