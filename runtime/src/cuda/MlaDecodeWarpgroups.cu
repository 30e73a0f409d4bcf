//===- MlaDecodeWarpgroups.cu - MLA decode on wgmma -----------------------===//
//
// A block: 64 heads of one sequence over one chunk of its latent cache, two
// warpgroups, one block per multiprocessor (its tiles take ~225 KB of
// shared memory). All operands of the products stay in shared memory in
// the 128-byte swizzle (Wgmma.cuh), as nine [64 x 64] blocks of the 576
// latent dims:
//  - the queries, [64 heads x 576], loaded once;
//  - two cache tiles, [64 tokens x 576]: one is used while the next tile
//    of the chunk comes into the other, by TMA (one thread's nine box
//    loads, counted on an mbarrier) where the cache's extent is known,
//    else by every thread's cp.async. A tile is both the keys (K-major B
//    of the scores) and, its first 512 dims, the values (MN-major B of the
//    weighted sum): the swizzled block reads either way;
//  - the softmax weights, [64 heads x 64 tokens] BF16.
// Per tile, warpgroup w scores tokens 32 w .. 32 w + 31 of every head
// (wgmma m64n32, 36 k16 steps over the 576 dims); the two exchange their
// row maxima, write their weights, and each adds weights x values into its
// 256 of the 512 output columns (wgmma m64n256, 4 steps over the tokens).
// The weighted sum of a tile and the scores of the next are issued back to
// back; the tile after that is requested once both warpgroups' sums are
// done with its buffer.
// The softmax runs in base 2 (the scale times log2 e); the statistics a
// chunk leaves are natural-log maxima, as the combine expects.
//
//===----------------------------------------------------------------------===//
#include "cuda/MlaDecodeWarpgroups.h"

#include "EnvSwitch.h"

#include "cuda/BulkTensorCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/MlaDecodeSeesaw.h"
#include "cuda/MlaWarpgroupRows.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/TensorMaps.h"
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
/// the weights, each warpgroup's row maxima (or, at the end, sums), then
/// the two tiles' load barriers.
constexpr size_t kQueriesAt = 0, kTilesAt = kTileBytes,
                 kWeightsAt = 3 * size_t(kTileBytes),
                 kRowStatsAt = kWeightsAt + kBlockBytes,
                 kBarriersAt = kRowStatsAt + 2 * 64 * sizeof(float),
                 kSharedBytes = kBarriersAt + 2 * sizeof(uint64_t) +
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

/// kBulk: the tiles come by TMA through `cacheMap` (a [rows x 576] view
/// of the cache, [64 x 64] boxes in the 128-byte swizzle), else by every
/// thread's cp.async.
template <bool kBulk>
__global__ void __launch_bounds__(kThreads, 1)
    mlaDecodeWarpgroupChunks(MlaDecodeArgs args, int chunkTokens, int chunks,
                             float *partialSums, float2 *partialStats,
                             const __grid_constant__ CUtensorMap cacheMap) {
  awaitPriorKernels();
  extern __shared__ uint8_t sharedRaw[];
  uint8_t *shared = sharedRaw + (kSwizzleAtomBytes -
                                 sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                    kSwizzleAtomBytes;
  uint8_t *queries = shared + kQueriesAt;
  uint8_t *weights = shared + kWeightsAt;
  float *rowStats = reinterpret_cast<float *>(shared + kRowStatsAt);
  uint64_t *tileLoaded = reinterpret_cast<uint64_t *>(shared + kBarriersAt);

  const int headGroup = blockIdx.x, chunk = blockIdx.y, seq = blockIdx.z;
  const int group = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int length = args.lengths[seq];
  const int begin = chunk * chunkTokens;
  const int end = min(length, begin + chunkTokens);
  const int head0 = headGroup * kWarpgroupHeads;
  const int32_t *pages =
      args.blockTable + size_t(seq) * args.maxPagesPerSequence;
  // The cache row of token t0 of the sequence (tiles lie in one page).
  auto rowOf = [&](int t0) {
    return size_t(pages[t0 / args.pageSize]) * args.pageSize +
           t0 % args.pageSize;
  };
  // Starts the copy of tile `index` of the chunk into its buffer.
  auto startTile = [&](int index) {
    const int t0 = begin + index * kWarpgroupTileTokens;
    uint8_t *to = shared + kTilesAt + (index % 2) * kTileBytes;
    if constexpr (kBulk) {
      if (threadIdx.x == 0) {
        uint64_t *barrier = &tileLoaded[index % 2];
        expectBytes(barrier, kTileBytes);
        for (int block = 0; block < kDimBlocks; ++block)
          loadTile2d(to + block * kBlockBytes, &cacheMap, block * 64,
                     int(rowOf(t0)), barrier);
      }
    } else {
      copyRows(to, args.cache + rowOf(t0) * kLatentEntry, kLatentEntry,
               end - t0);
      commitCopies();
    }
  };
  // Waits for tile `index` (this thread's part of it, for cp.async: a
  // barrier then shows all of it); a bulk-loaded tile's rows past the
  // chunk's end (other tokens of the page, or nothing written yet) become
  // zeros, as cp.async's do, so that they add nothing to the sums.
  auto awaitTile = [&](int index) {
    if constexpr (kBulk) {
      awaitBarrier(&tileLoaded[index % 2], (index / 2) % 2);
      const int t0 = begin + index * kWarpgroupTileTokens;
      const int rows = end - t0;
      if (rows < kWarpgroupTileTokens) { // block-uniform
        uint8_t *tile = shared + kTilesAt + (index % 2) * kTileBytes;
        for (int i = threadIdx.x;
             i < (kWarpgroupTileTokens - rows) * kEntryChunks; i += kThreads) {
          const int row = rows + i / kEntryChunks, chunk = i % kEntryChunks;
          *reinterpret_cast<uint4 *>(tile + (chunk / 8) * kBlockBytes +
                                     swizzledOffset(row, chunk % 8)) =
              make_uint4(0, 0, 0, 0);
        }
      }
    } else {
      awaitCopies<0>();
    }
  };

  // The operands' descriptors, made once: every step's is one of these
  // advanced by a constant (the queries; this warpgroup's tokens of each
  // buffer as keys, and its 256 columns as values; the weights).
  const uint64_t queriesAt = kMajorDescriptor(queries);
  // (Buffer 1's are buffer 0's a tile further: a select, not an array in
  // local memory.)
  const uint64_t keysAt = kMajorDescriptor(
      shared + kTilesAt + group * kGroupTokens * kSwizzleRowBytes);
  const uint64_t valuesAt = mnMajorDescriptor(
      shared + kTilesAt + group * (kValueBlocks / 2) * kBlockBytes,
      kBlockBytes);
  auto inBuffer = [](uint64_t descriptor, int index) {
    return index % 2 ? advanced(descriptor, kTileBytes) : descriptor;
  };
  const uint64_t weightsAt = kMajorDescriptor(weights);

  // Scores of this warpgroup's 32 tokens of tile `index`, [64 x 576] x
  // [576 x 32], issued as one group (waited for by the caller).
  float score[16];
  auto issueScores = [&](int index) {
    const uint64_t keys = inBuffer(keysAt, index);
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < kLatentEntry / 16; ++step) {
      const uint32_t offset = (step / 4) * kBlockBytes + (step % 4) * 32;
      wgmma64x32(score, advanced(queriesAt, offset), advanced(keys, offset),
                 step > 0);
    }
    wgmmaCommit();
  };

  // The queries and the chunk's first tile, its second into the other
  // buffer; then the first tile's scores.
  if (kBulk && threadIdx.x == 0) {
    initLoadBarrier(&tileLoaded[0]);
    initLoadBarrier(&tileLoaded[1]);
  }
  copyRows(queries,
           args.queries + (size_t(seq) * args.heads + head0) * kLatentEntry,
           kLatentEntry, 64);
  commitCopies();
  __syncthreads(); // the barriers initialized
  const int tiles =
      max(0, (end - begin + kWarpgroupTileTokens - 1) / kWarpgroupTileTokens);
  for (int index = 0; index < min(tiles, 2); ++index)
    startTile(index);
  awaitCopies<0>(); // the queries (and cp.async's first tiles)
  if (tiles > 0)
    awaitTile(0);
  fenceSharedForWgmma();
  __syncthreads();
  if (tiles > 0) {
    issueScores(0);
    wgmmaWait<0>();
  }

  // This thread's rows (heads) in every fragment: r[0] = 16 warp + g and
  // r[1] = r[0] + 8; the tokens each sees (a prefill's causal rows).
  const int rows[2] = {16 * warp + g, 16 * warp + g + 8};
  int rowEnd[2];
  mlaRowEnds(args, seq, head0, end, rows, rowEnd);
  const float scale = args.scale * 1.4426950408889634f; // log2 e
  float runningMax[2] = {-FLT_MAX, -FLT_MAX};
  float runningSum[2] = {0.f, 0.f}; // this thread's tokens only
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i)
    acc[i] = 0.f;

  // At tile i its scores are in `score` and tile i + 1 is in flight or
  // landed. The tensor cores take tile i's weighted sum and tile i + 1's
  // scores back to back; tile i + 2 streams into tile i's buffer as soon
  // as both warpgroups' sums of it are done.
  for (int i = 0; i < tiles; ++i) {
    const int t0 = begin + i * kWarpgroupTileTokens;
    // Row maxima over both warpgroups' tokens (tokens past a row's end
    // count for nothing).
    float tileMax[2];
    scaleMlaScores<32>(score, t0 + group * kGroupTokens,
                       t0 + kWarpgroupTileTokens <= min(rowEnd[0], rowEnd[1]),
                       rowEnd, scale, t, tileMax);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
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
    // columns 32 group .. of the [64 heads x 64 tokens] block (both
    // warpgroups' sums of the last tile, which read it, are done).
    storeMlaWeights<32>(score, runningMax, weights, group * 4, rows, t,
                        runningSum);
    // The running sums rescaled: skipped where no row of the warp's
    // maximum moved.
    if (__any_sync(0xffffffff, factor[0] != 1.f || factor[1] != 1.f)) {
#pragma unroll
      for (int v = 0; v < 128; ++v)
        acc[v] *= factor[(v / 2) % 2];
    }
    fenceSharedForWgmma();
    __syncthreads();

    // Weights x values: [64 x 64 tokens] x [64 tokens x this warpgroup's
    // 256 columns].
    const uint64_t values = inBuffer(valuesAt, i);
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < kWarpgroupTileTokens / 16; ++step)
      wgmma64x256Transposed(acc, advanced(weightsAt, step * 32),
                            advanced(values, step * 2 * kSwizzleAtomBytes));
    wgmmaCommit();
    if (i + 1 == tiles) {
      wgmmaWait<0>();
      break;
    }
    // Tile i + 1, shown to the tensor cores; its scores behind the sum.
    awaitTile(i + 1);
    fenceSharedForWgmma();
    __syncthreads();
    issueScores(i + 1);
    // Both warpgroups' sums of tile i done: its buffer (and the weights)
    // may be written again.
    wgmmaWait<1>();
    __syncthreads();
    if (i + 2 < tiles)
      startTile(i + 2);
    wgmmaWait<0>();
  }
  awaitCopies<0>();

  // This chunk's unnormalized sums, and its statistics: the row sums of
  // both warpgroups' tokens added.
  const size_t slot = (size_t(seq) * chunks + chunk) * args.heads + head0;
  float *out = partialSums + slot * kLatentRank + group * kGroupColumns;
  storeMlaSums(acc, out, rows, t);
  __syncthreads(); // the row maxima's last readers are done
  // (their memory takes the row sums)
  storeMlaStatistics(runningMax, runningSum, rowStats, partialStats + slot,
                     rows, group, t);
}

} // namespace

bool mlaDecodeOnWarpgroups(const MlaDecodeArgs &args) {
  static const bool enabled = melt::rt::envSwitch("MELT_CUDA_MLA_WGMMA", true);
  return enabled && args.warpgroups && args.heads % kWarpgroupHeads == 0 &&
         args.pageSize % kWarpgroupTileTokens == 0;
}

size_t mlaWarpgroupSharedBytes() { return kSharedBytes; }

bool mlaCacheTensorMap(const MlaDecodeArgs &args, int boxRows,
                       CUtensorMap &map) {
  static const bool enabled =
      melt::rt::envSwitch("MELT_CUDA_MLA_BULK_COPY", true);
  return enabled && args.cachePages > 0 &&
         swizzledBf16Map(map, args.cache,
                         uint64_t(args.cachePages) * args.pageSize,
                         kLatentEntry, kLatentEntry, uint32_t(boxRows));
}

namespace {

template <bool kBulk>
cudaError_t launchChunks(const MlaDecodeArgs &args, int chunkTokens, int chunks,
                         float *sums, float2 *stats, const CUtensorMap &map,
                         cudaStream_t stream) {
  cudaError_t error = cudaFuncSetAttribute(
      mlaDecodeWarpgroupChunks<kBulk>,
      cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSharedBytes));
  if (error != cudaSuccess)
    return error;
  // The head groups of a chunk next to each other: they read the same
  // tiles, the second mostly from L2.
  const dim3 grid(args.heads / kWarpgroupHeads, chunks, args.batch);
  error = launchOverlapped(mlaDecodeWarpgroupChunks<kBulk>, grid, kThreads,
                           kSharedBytes, stream, args, chunkTokens, chunks,
                           sums, stats, map);
  return error != cudaSuccess ? error : cudaGetLastError();
}

} // namespace

cudaError_t launchMlaWarpgroupChunks(const MlaDecodeArgs &args, int chunkTokens,
                                     int chunks, float *sums, float2 *stats,
                                     cudaStream_t stream) {
  if (chunkTokens % kWarpgroupTileTokens != 0 || !mlaDecodeOnWarpgroups(args))
    return cudaErrorInvalidValue;
  alignas(64) CUtensorMap map{};
  if (!mlaCacheTensorMap(args, kWarpgroupTileTokens, map))
    return launchChunks<false>(args, chunkTokens, chunks, sums, stats, map,
                               stream);
  return mlaDecodeSeesaw() ? launchMlaSeesawChunks(args, chunkTokens, chunks,
                                                   sums, stats, map, stream)
                           : launchChunks<true>(args, chunkTokens, chunks, sums,
                                                stats, map, stream);
}

} // namespace melt::rt::cuda
